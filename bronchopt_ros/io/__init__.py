"""Files and messages: TUM trajectories, rosbag2 case bags (rosbags), image messages <-> numpy.

Nothing here imports rclpy (``ros_convert`` is the nodes' rclpy-side module and is not imported
by this package). Submodules are imported lazily: ``from bronchopt_ros.io import tum, bag, image``.
"""
from __future__ import annotations

__all__ = ["bag", "image", "tum"]
