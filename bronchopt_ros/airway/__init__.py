"""The airway: mesh loading (mm -> m), CT volume -> mesh, centerline graph."""
from .centerline import Branch, Centerline
from .mesh import Airway, MeshUnitsError, load_airway

__all__ = ["Airway", "Branch", "Centerline", "MeshUnitsError", "load_airway"]
