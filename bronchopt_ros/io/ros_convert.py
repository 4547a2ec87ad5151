"""Conversions between the core types and ROS 2 messages (rclpy message classes).

Only the nodes and the replay/record tools import this module; the core never does.
Frames follow ../shared/CONTRACT.md: poses are ``ct`` -> ``bronchoscope_optical_frame``,
metres, quaternions x, y, z, w.
"""
from __future__ import annotations

import math

import numpy as np

from ..airway.centerline import Branch, Centerline
from ..airway.mesh import Airway
from ..geometry import Pose

CT_FRAME = "ct"
CAMERA_FRAME = "bronchoscope_optical_frame"


# --------------------------------------------------------------------------- time
def stamp_to_sec(stamp) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def sec_to_stamp(t: float):
    from builtin_interfaces.msg import Time

    sec = math.floor(t)
    return Time(sec=int(sec), nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# --------------------------------------------------------------------------- poses
def pose_from_msg(msg) -> Pose:
    """geometry_msgs Pose (or PoseStamped / PoseWithCovariance[Stamped]) -> Pose.

    Raises ValueError for NaN values or a quaternion that is not (close to) unit length.
    """
    while hasattr(msg, "pose"):
        msg = msg.pose
    q = np.array([msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w], float)
    t = np.array([msg.position.x, msg.position.y, msg.position.z], float)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise ValueError("pose has NaN or infinite values")
    n = float(np.linalg.norm(q))
    if abs(n - 1.0) > 1e-2:
        raise ValueError(f"pose quaternion is not unit length (|q| = {n:.4g})")
    return Pose.from_quat(q / n, t)


def pose_to_msg(pose: Pose):
    from geometry_msgs.msg import Pose as PoseMsg

    m = PoseMsg()
    q = pose.quat  # x, y, z, w
    m.position.x, m.position.y, m.position.z = (float(v) for v in pose.t)
    m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w = (float(v) for v in q)
    return m


def pose_stamped(pose: Pose, stamp, frame_id: str = CT_FRAME):
    from geometry_msgs.msg import PoseStamped

    m = PoseStamped()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.pose = pose_to_msg(pose)
    return m


def transform_stamped(pose: Pose, stamp, parent: str = CT_FRAME, child: str = CAMERA_FRAME):
    from geometry_msgs.msg import TransformStamped

    m = TransformStamped()
    m.header.stamp = stamp
    m.header.frame_id = parent
    m.child_frame_id = child
    m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = (float(v) for v in pose.t)
    q = pose.quat
    m.transform.rotation.x, m.transform.rotation.y, m.transform.rotation.z, m.transform.rotation.w = (
        float(v) for v in q)
    return m


def initial_pose_msg(pose: Pose, stamp, frame_id: str = CT_FRAME):
    from geometry_msgs.msg import PoseWithCovarianceStamped

    m = PoseWithCovarianceStamped()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.pose.pose = pose_to_msg(pose)
    return m


# --------------------------------------------------------------------------- airway
def airway_to_msg(airway: Airway, stamp, source: str = "", frame_id: str = CT_FRAME):
    """Airway (metres) -> bronchopt_msgs/AirwayMesh."""
    from bronchopt_msgs.msg import AirwayBranch, AirwayMesh
    from geometry_msgs.msg import Point

    m = AirwayMesh()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.vertices = np.asarray(airway.vertices, np.float64).ravel()
    m.triangles = np.asarray(airway.faces, np.uint32).ravel()
    m.source = source
    branches = []
    for b in (airway.centerline.branches if airway.centerline is not None else []):
        bm = AirwayBranch()
        bm.id, bm.parent, bm.generation = int(b.id), int(b.parent), int(b.generation)
        bm.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in b.points]
        bm.radii = np.asarray(b.radii, np.float64)
        branches.append(bm)
    m.centerline = branches
    return m


def airway_from_msg(msg) -> Airway:
    """bronchopt_msgs/AirwayMesh -> Airway. Raises ValueError on malformed content."""
    v = np.asarray(msg.vertices, np.float64)
    f = np.asarray(msg.triangles, np.int64)
    if v.size % 3 or f.size % 3:
        raise ValueError("AirwayMesh: vertices/triangles length is not a multiple of 3")
    branches = []
    for bm in msg.centerline:
        pts = np.array([[p.x, p.y, p.z] for p in bm.points], float)
        branches.append(Branch(int(bm.id), int(bm.parent), int(bm.generation), pts,
                               np.asarray(bm.radii, float)))
    return Airway(v.reshape(-1, 3), f.reshape(-1, 3), Centerline(branches) if branches else None).check()


def decimate_for_display(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Cheap vertex-clustering decimation for visualisation only (never used for tracking)."""
    if len(faces) <= max_faces:
        return vertices, faces
    extent = float(np.ptp(vertices, axis=0).max())
    cell = extent / 400.0
    for _ in range(12):
        keys = np.floor(vertices / cell).astype(np.int64)
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        f = inverse[faces]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
        if len(f) <= max_faces:
            break
        cell *= 1.3
    counts = np.bincount(inverse, minlength=inverse.max() + 1)[:, None]
    v = np.zeros((inverse.max() + 1, 3))
    np.add.at(v, inverse, vertices)
    return v / np.maximum(counts, 1), f


def airway_marker(airway: Airway, stamp, max_faces: int = 100_000, frame_id: str = CT_FRAME,
                  rgba=(0.85, 0.45, 0.45, 0.35)):
    """A visualization_msgs/Marker TRIANGLE_LIST of the airway (decimated to ``max_faces``)."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker

    v, f = decimate_for_display(airway.vertices, airway.faces, max_faces)
    m = Marker()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.ns = "airway"
    m.id = 0
    m.type = Marker.TRIANGLE_LIST
    m.action = Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x = m.scale.y = m.scale.z = 1.0
    m.color = ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3]))
    tri = v[f.reshape(-1)]
    m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in tri.tolist()]
    m.frame_locked = False
    return m
