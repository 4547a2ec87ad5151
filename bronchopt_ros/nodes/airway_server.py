"""Airway server node: loads the CT airway and serves it to the navigator and RViz.

Loads the airway from a mesh file (STL/PLY/OBJ, unit parameter ``mesh_units``) or a CT volume
(NIfTI: a CT in Hounsfield units thresholded at ``ct_threshold_hu``, or a label map with
``ct_label``), computes the centerline when none is given, and serves it:

* ``/airway/mesh`` (bronchopt_msgs/AirwayMesh, transient local = latched),
* ``/airway/get_mesh`` (bronchopt_msgs/srv/GetAirwayMesh),
* ``/airway/marker`` (visualization_msgs/Marker TRIANGLE_LIST, transient local) for RViz.

A missing or unreadable file, wrong units or an empty mesh give a clear error in the log and in
the service's reply; the node stays up, and setting ``mesh_path`` again (``ros2 param set``)
loads the new file.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult

from bronchopt_msgs.msg import AirwayMesh
from bronchopt_msgs.srv import GetAirwayMesh
from visualization_msgs.msg import Marker

from ..airway.loading import load_airway_with_centerline
from ..io import ros_convert as rc
from .params import declare

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class AirwayServer(Node):
    def __init__(self, **kwargs):
        super().__init__("airway_server", **kwargs)
        self.mesh_path = declare(self, "mesh_path", "", "Airway mesh (STL/PLY/OBJ) or CT volume (NIfTI .nii/.nii.gz).")
        self.mesh_units = declare(self, "mesh_units", "mm", "Unit of the mesh file's coordinates: mm, cm or m.")
        self.ct_threshold_hu = declare(self, "ct_threshold_hu", -900.0,
                                       "NIfTI CT: air threshold in Hounsfield units for the airway segmentation.",
                                       (-1024.0, 0.0))
        self.ct_label = declare(self, "ct_label", -1,
                                "NIfTI label map: the airway's label value (-1: the file is a CT, threshold it; "
                                "0: any non-zero label).", (-1, 65535))
        self.centerline_path = declare(self, "centerline_path", "",
                                       "Optional centerline JSON; default: <mesh>.centerline.json if present, "
                                       "else computed from the mesh.")
        self.marker_max_faces = declare(self, "marker_max_faces", 100000,
                                        "Faces of the RViz marker (decimated copy; tracking uses the full mesh).",
                                        (1000, 5000000))
        self.frame_id = declare(self, "frame_id", rc.CT_FRAME, "Frame of the CT (REP-105 style name).")

        self.mesh_pub = self.create_publisher(AirwayMesh, "/airway/mesh", LATCHED)
        self.marker_pub = self.create_publisher(Marker, "/airway/marker", LATCHED)
        self.srv = self.create_service(GetAirwayMesh, "/airway/get_mesh", self._on_get_mesh)
        self.mesh_msg: AirwayMesh | None = None
        self.error = "no mesh loaded yet"
        self.add_on_set_parameters_callback(self._on_params)
        self.load()

    # ------------------------------------------------------------------ loading
    def load(self) -> bool:
        path = self.mesh_path
        if not path:
            self.error = "parameter mesh_path is empty: give an airway mesh or CT volume"
            self.get_logger().error(self.error)
            return False
        try:
            airway = load_airway_with_centerline(
                path, units=self.mesh_units,
                threshold_hu=self.ct_threshold_hu if self.ct_label < 0 else None,
                label=None if self.ct_label < 0 else self.ct_label,
                centerline_path=self.centerline_path or None)
        except (OSError, ValueError) as exc:  # FileNotFoundError, MeshUnitsError, empty meshes ...
            self.error = f"cannot load airway '{path}': {exc}"
            self.get_logger().error(self.error)
            return False
        stamp = self.get_clock().now().to_msg()
        self.mesh_msg = rc.airway_to_msg(airway, stamp, source=str(Path(path).resolve()), frame_id=self.frame_id)
        self.mesh_pub.publish(self.mesh_msg)
        self.marker_pub.publish(rc.airway_marker(airway, stamp, self.marker_max_faces, frame_id=self.frame_id))
        self.error = ""
        n_br = len(airway.centerline) if airway.centerline is not None else 0
        self.get_logger().info(
            f"serving airway {path}: {len(airway.faces)} faces, extent {airway.extent * 1000:.0f} mm, "
            f"{n_br} centerline branches")
        return True

    def _on_params(self, params: list[Parameter]) -> SetParametersResult:
        reload = False
        for p in params:
            if p.name in ("mesh_path", "mesh_units", "ct_threshold_hu", "ct_label", "centerline_path"):
                setattr(self, p.name, p.value)
                reload = True
        if reload:
            # Load after the parameter is set (the callback must return first).
            self._reload_timer = self.create_timer(0.0, self._reload_once)
        return SetParametersResult(successful=True)

    def _reload_once(self) -> None:
        self._reload_timer.cancel()
        self.destroy_timer(self._reload_timer)
        self.load()

    def _on_get_mesh(self, request, response):
        if self.mesh_msg is None:
            response.success = False
            response.message = self.error
        else:
            response.success = True
            response.message = "ok"
            response.mesh = self.mesh_msg
        return response


def main(args=None) -> int:
    from .spin import run_node

    return run_node(AirwayServer, args)


if __name__ == "__main__":
    sys.exit(main())
