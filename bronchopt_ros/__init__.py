"""bronchopt_ros: real-time bronchoscope localisation by 2D-3D registration (BronchOpt)."""
__version__ = "0.1.0"
