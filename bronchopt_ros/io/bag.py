"""rosbag2 recordings of a procedure (../shared/CONTRACT.md), with ``rosbags`` (no rclpy).

:class:`BagWriter` writes the contract's topics with their types, frames and stamps:

=================================== ========================================= ===========================
topic                               type                                      frame
=================================== ========================================= ===========================
``/bronchoscope/image_raw``          ``sensor_msgs/msg/Image`` (rgb8)          ``bronchoscope_optical_frame``
``/bronchoscope/image_raw/compressed`` ``sensor_msgs/msg/CompressedImage``     ``bronchoscope_optical_frame``
``/bronchoscope/camera_info``        ``sensor_msgs/msg/CameraInfo`` plumb_bob  ``bronchoscope_optical_frame``
``/initialpose``                     ``geometry_msgs/msg/PoseWithCovarianceStamped`` ``ct``
``/bronchoscope/pose_gt``            ``geometry_msgs/msg/PoseStamped``         ``ct``
=================================== ========================================= ===========================

Every message is logged at its header stamp. :func:`read_case_bag` reads such a bag back as a
time-ordered stream of :class:`BagEvent` s (mcap or sqlite3 storage). It tolerates damage: a
message that does not deserialize or convert gives an ``"error"`` event and reading goes on; a
storage that breaks off (a truncated mcap, a corrupt sqlite3 file) gives the good messages before
the break and then one ``"error"`` event saying where it failed. A truncated mcap (no footer, no
``metadata.yaml``) is read by a plain record scan.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..geometry import Camera, Pose

__all__ = [
    "TOPIC_IMAGE", "TOPIC_IMAGE_COMPRESSED", "TOPIC_CAMERA_INFO", "TOPIC_INITIALPOSE", "TOPIC_POSE_GT",
    "CT_FRAME", "CAMERA_FRAME", "MSGTYPES", "BagWriter", "BagEvent", "read_case_bag", "typestore",
    "make_header", "ns_to_stamp", "stamp_to_ns",
]

TOPIC_IMAGE = "/bronchoscope/image_raw"
TOPIC_IMAGE_COMPRESSED = "/bronchoscope/image_raw/compressed"
TOPIC_CAMERA_INFO = "/bronchoscope/camera_info"
TOPIC_INITIALPOSE = "/initialpose"
TOPIC_POSE_GT = "/bronchoscope/pose_gt"
CT_FRAME = "ct"
CAMERA_FRAME = "bronchoscope_optical_frame"

#: topic -> message type of the contract
MSGTYPES = {
    TOPIC_IMAGE: "sensor_msgs/msg/Image",
    TOPIC_IMAGE_COMPRESSED: "sensor_msgs/msg/CompressedImage",
    TOPIC_CAMERA_INFO: "sensor_msgs/msg/CameraInfo",
    TOPIC_INITIALPOSE: "geometry_msgs/msg/PoseWithCovarianceStamped",
    TOPIC_POSE_GT: "geometry_msgs/msg/PoseStamped",
}
_KINDS = {TOPIC_IMAGE: "image", TOPIC_IMAGE_COMPRESSED: "image", TOPIC_CAMERA_INFO: "camera_info",
          TOPIC_INITIALPOSE: "initialpose", TOPIC_POSE_GT: "pose_gt"}

#: default /initialpose covariance: (1 mm)^2 on x, y, z and (0.05 rad)^2 on the rotations
DEFAULT_INIT_COVARIANCE = np.diag([1e-6] * 3 + [0.05**2] * 3)


@lru_cache(maxsize=1)
def typestore():
    """The rosbags type store used for every message (ROS 2 kilted definitions)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (rosbags)."""
    T = typestore().types["builtin_interfaces/msg/Time"]
    ns = int(ns)
    return T(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (rosbags or rclpy) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def make_header(stamp_ns: int, frame_id: str):
    """A rosbags ``std_msgs/Header``."""
    return typestore().types["std_msgs/msg/Header"](stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _pose_msg(pose: Pose):
    ts = typestore().types
    t, q = pose.t, pose.quat
    return ts["geometry_msgs/msg/Pose"](
        position=ts["geometry_msgs/msg/Point"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=ts["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def _pose_from_msg(msg: Any) -> Pose:
    while hasattr(msg, "pose"):
        msg = msg.pose
    o, p = msg.orientation, msg.position
    return Pose.from_quat([o.x, o.y, o.z, o.w], [p.x, p.y, p.z])


def camera_info_msg(camera: Camera, stamp_ns: int, frame_id: str = CAMERA_FRAME):
    """A rosbags ``sensor_msgs/CameraInfo`` for ``camera`` (its model: plumb_bob, 5 coefficients, or
    equidistant, 4)."""
    ts = typestore().types
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    return ts["sensor_msgs/msg/CameraInfo"](
        header=make_header(stamp_ns, frame_id), height=camera.height, width=camera.width,
        distortion_model=camera.model, d=np.asarray(camera.dist, dtype=np.float64).reshape(-1),
        k=camera.K.reshape(-1).astype(np.float64), r=np.eye(3).reshape(-1), p=P.reshape(-1),
        binning_x=0, binning_y=0,
        roi=ts["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


# =========================================================================== writing
class BagWriter:
    """Write a procedure bag (a rosbag2 folder) with the contract's topics.

    ``storage`` is ``"mcap"`` (default) or ``"sqlite3"``. Images go to the raw topic
    (``raw_images``, rgb8) and/or the compressed one (``compressed_images``: ``"jpeg"`` or
    ``"png"``). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", raw_images: bool = True,
                 compressed_images: str | None = None, image_encoding: str = "rgb8", jpeg_quality: int = 90):
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be one of {sorted(plugins)}, got '{storage}'")
        if image_encoding not in ("rgb8", "bgr8"):
            raise ValueError("the contract's image encodings are rgb8 and bgr8")
        if not raw_images and not compressed_images:
            raise ValueError("BagWriter: enable raw_images or compressed_images")
        self.path = Path(path)
        self.raw_images = raw_images
        self.compressed_images = compressed_images
        self.image_encoding = image_encoding
        self.jpeg_quality = jpeg_quality
        self.counts: dict[str, int] = {}
        self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        self._writer.open()
        self._conns: dict[str, Any] = {}

    # ----------------------------------------------------------------- plumbing
    def _write(self, topic: str, msg: Any, log_ns: int) -> None:
        ts = typestore()
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, MSGTYPES[topic], typestore=ts)
        self._writer.write(self._conns[topic], int(log_ns), ts.serialize_cdr(msg, MSGTYPES[topic]))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- topics
    def write_initialpose(self, stamp_ns: int, pose: Pose, covariance: np.ndarray | None = None) -> None:
        """``/initialpose`` in frame ``ct`` (write it before the first image)."""
        ts = typestore().types
        cov = DEFAULT_INIT_COVARIANCE if covariance is None else np.asarray(covariance, dtype=np.float64)
        msg = ts["geometry_msgs/msg/PoseWithCovarianceStamped"](
            header=make_header(stamp_ns, CT_FRAME),
            pose=ts["geometry_msgs/msg/PoseWithCovariance"](pose=_pose_msg(pose), covariance=cov.reshape(36).copy()))
        self._write(TOPIC_INITIALPOSE, msg, stamp_ns)

    def write_camera_info(self, stamp_ns: int, camera: Camera) -> None:
        self._write(TOPIC_CAMERA_INFO, camera_info_msg(camera, stamp_ns), stamp_ns)

    def write_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        """An RGB uint8 (H, W, 3) frame on the raw and/or compressed image topic."""
        from .image import convert_encoding, numpy_to_compressed, numpy_to_image

        header = make_header(stamp_ns, CAMERA_FRAME)
        if self.raw_images:
            img = convert_encoding(rgb, "rgb8", self.image_encoding)
            self._write(TOPIC_IMAGE, numpy_to_image(img, self.image_encoding, header=header), stamp_ns)
        if self.compressed_images:
            msg = numpy_to_compressed(rgb, "rgb8", self.compressed_images, self.jpeg_quality, header=header)
            self._write(TOPIC_IMAGE_COMPRESSED, msg, stamp_ns)

    def write_pose_gt(self, stamp_ns: int, pose: Pose) -> None:
        ts = typestore().types
        msg = ts["geometry_msgs/msg/PoseStamped"](header=make_header(stamp_ns, CT_FRAME), pose=_pose_msg(pose))
        self._write(TOPIC_POSE_GT, msg, stamp_ns)

    def write_frame(self, stamp_ns: int, rgb: np.ndarray, camera: Camera, pose_gt: Pose | None = None) -> None:
        """camera_info, image and (if given) pose_gt, all with the same stamp."""
        self.write_camera_info(stamp_ns, camera)
        self.write_image(stamp_ns, rgb)
        if pose_gt is not None:
            self.write_pose_gt(stamp_ns, pose_gt)


# =========================================================================== reading
@dataclass
class BagEvent:
    """One message of a case bag, decoded.

    ``kind`` is ``"camera_info"`` (``data``: :class:`Camera`), ``"image"`` (``data``: RGB uint8
    (H, W, 3); ``compressed`` tells the topic), ``"initialpose"`` (``data``: :class:`Pose`,
    ``covariance`` (6, 6)), ``"pose_gt"`` (``data``: :class:`Pose`) or ``"error"`` (``error``
    says what failed; ``data`` is None). ``stamp_ns`` is the header stamp, ``log_time_ns`` the
    bag's receive time; events come ordered by ``log_time_ns``.
    """

    kind: str
    topic: str
    stamp_ns: int
    log_time_ns: int
    frame_id: str = ""
    data: Any = None
    covariance: np.ndarray | None = None
    compressed: bool = False
    error: str | None = None
    msg: Any = field(default=None, repr=False)

    @property
    def stamp_s(self) -> float:
        """Seconds, computed as the node computes a header's (sec + 1e-9 nanosec), so offline and
        node runs see bit-identical frame times (the odometry's velocity divides by their steps)."""
        sec, nsec = divmod(int(self.stamp_ns), 1_000_000_000)
        return float(sec) + 1e-9 * float(nsec)


def _decode(topic: str, msgtype: str, raw: bytes, log_ns: int, decode_images: bool) -> BagEvent:
    ts = typestore()
    try:
        msg = ts.deserialize_cdr(raw, msgtype)
    except Exception as exc:  # rosbags raises assorted errors on bad CDR
        return BagEvent("error", topic, -1, log_ns, error=f"{topic} @ {log_ns} ns: cannot deserialize {msgtype}: {exc}")
    kind = _KINDS[topic]
    try:
        stamp = stamp_to_ns(msg.header.stamp)
        frame = str(msg.header.frame_id)
        ev = BagEvent(kind, topic, stamp, log_ns, frame, msg=msg)
        if kind == "camera_info":
            ev.data = Camera.from_camera_info(msg)
        elif kind == "image":
            ev.compressed = topic == TOPIC_IMAGE_COMPRESSED
            if decode_images:
                from .image import msg_to_rgb8

                ev.data = msg_to_rgb8(msg)
        elif kind == "initialpose":
            ev.data = _pose_from_msg(msg)
            ev.covariance = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        elif kind == "pose_gt":
            ev.data = _pose_from_msg(msg)
        return ev
    except Exception as exc:  # ImageConversionError, ValueError (bad pose / camera) and others
        return BagEvent("error", topic, -1, log_ns, error=f"{topic} @ {log_ns} ns: {type(exc).__name__}: {exc}")


def read_case_bag(path: str | Path, topics: list[str] | None = None, decode_images: bool = True) -> Iterator[BagEvent]:
    """Read a case bag (the ``procedure/`` folder, or a bare ``.mcap`` file) as events.

    Only the contract's topics are read (``topics`` narrows them further); other topics are
    skipped. Never raises for damaged data: see the module docstring. A path that does not exist
    raises ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    wanted = set(MSGTYPES) if topics is None else set(topics) & set(MSGTYPES)
    last_ns = None
    try:
        source = _rosbags_messages(path, wanted)
        first = next(source, None)
        stream = _chain(first, source)
    except Exception as exc:  # rosbags cannot open it: scan the mcap records ourselves
        mcap = _find_mcap(path)
        if mcap is None:
            yield BagEvent("error", "", -1, -1, error=f"cannot open bag {path}: {type(exc).__name__}: {exc}")
            return
        stream = _scan_mcap(mcap, wanted)
    try:
        for item in stream:
            if isinstance(item, BagEvent):  # a wrong-typed topic, or where a scan broke off
                yield item
                continue
            topic, msgtype, log_ns, raw = item
            last_ns = log_ns
            yield _decode(topic, msgtype, raw, log_ns, decode_images)
    except Exception as exc:
        where = "before the first message" if last_ns is None else f"after the message logged at {last_ns} ns"
        yield BagEvent("error", "", -1, -1 if last_ns is None else last_ns,
                       error=f"bag {path} is damaged: reading stopped {where}: {type(exc).__name__}: {exc}")


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest


def _rosbags_messages(path: Path, wanted: set[str]):
    """(topic, msgtype, log_ns, raw) from rosbags' reader (opens eagerly)."""
    from rosbags.rosbag2 import Reader

    if path.is_file():
        raise ValueError("a bare file, not a rosbag2 folder")
    reader = Reader(path)
    reader.open()

    def gen():
        try:
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn, log_ns, raw in reader.messages(connections=conns):
                msgtype = MSGTYPES[conn.topic]
                if conn.msgtype != msgtype:
                    yield BagEvent("error", conn.topic, -1, log_ns,
                                   error=f"{conn.topic} has type {conn.msgtype}, the contract says {msgtype}")
                    continue
                yield conn.topic, msgtype, log_ns, bytes(raw)
        finally:
            try:
                reader.close()
            except Exception:
                pass

    return gen()


def _find_mcap(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".mcap" else None
    files = sorted(path.glob("*.mcap"))
    return files[0] if files else None


# ----------------------------------------------------------------- raw MCAP scan (damaged files)
_MAGIC = b"\x89MCAP0\r\n"


def _scan_mcap(path: Path, wanted: set[str]):
    """Scan MCAP records in file order, yielding (topic, msgtype, log_ns, raw) of the wanted
    topics, sorted by log time, then a :class:`BagEvent` error where the data broke off."""
    data = path.read_bytes()
    out: list[tuple[str, str, int, bytes]] = []
    error = None
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}

    def records(buf: bytes, pos: int, end: int, top: bool):
        """(op, body, complete) of the records in buf[pos:end]; a record cut by the end of the
        data comes last with ``complete=False`` (then the scan stops)."""
        while pos < end:
            if top and buf[pos:pos + 8] == _MAGIC and pos + 8 == end:
                return
            if pos + 9 > end:
                raise EOFError(f"record header cut at byte {pos}")
            op = buf[pos]
            (size,) = struct.unpack_from("<Q", buf, pos + 1)
            body = pos + 9
            if body + size > end:
                yield op, buf[body:end], False
                raise EOFError(f"record 0x{op:02x} at byte {pos} needs {size} bytes, {end - body} left")
            yield op, buf[body:body + size], True
            pos = body + size

    def string(b: bytes, off: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<I", b, off)
        if off + 4 + n > len(b):
            raise EOFError("string cut")
        return b[off + 4:off + 4 + n].decode("utf-8"), off + 4 + n

    def handle(op: int, body: bytes, complete: bool) -> None:
        if not complete and op != 0x06:
            return  # a cut record other than a chunk holds nothing usable
        if op == 0x03:  # schema
            (sid,) = struct.unpack_from("<H", body, 0)
            name, _ = string(body, 2)
            schemas[sid] = name
        elif op == 0x04:  # channel
            cid, sid = struct.unpack_from("<HH", body, 0)
            topic, _ = string(body, 4)
            channels[cid] = (topic, schemas.get(sid, ""))
        elif op == 0x05:  # message
            cid, _seq, log_ns, _pub = struct.unpack_from("<HIQQ", body, 0)
            if cid in channels and channels[cid][0] in wanted:
                topic, msgtype = channels[cid]
                out.append((topic, msgtype, int(log_ns), bytes(body[22:])))
        elif op == 0x06:  # chunk; a cut, uncompressed chunk still gives its complete records
            _s, _e, usize, _crc = struct.unpack_from("<QQQI", body, 0)
            comp, off = string(body, 28)
            (csize,) = struct.unpack_from("<Q", body, off)
            payload = body[off + 8:off + 8 + csize]
            if comp and not complete:
                return
            if comp == "zstd":
                from backports import zstd

                payload = zstd.decompress(payload)
            elif comp == "lz4":
                from lz4.frame import decompress

                payload = decompress(payload)
            elif comp:
                raise ValueError(f"unknown chunk compression '{comp}'")
            try:
                for op2, body2, ok2 in records(payload, 0, len(payload), False):
                    handle(op2, body2, ok2)
            except EOFError:
                if complete:
                    raise

    try:
        if data[:8] != _MAGIC:
            raise ValueError("not an MCAP file (bad magic)")
        for op, body, complete in records(data, 8, len(data), True):
            if op == 0x02:  # footer
                break
            handle(op, body, complete)
    except Exception as exc:
        last = out[-1][2] if out else None
        where = "before the first message" if last is None else f"after the message logged at {last} ns"
        error = BagEvent("error", "", -1, -1 if last is None else last,
                         error=f"mcap {path} is damaged: reading stopped {where}: {type(exc).__name__}: {exc}")
    out.sort(key=lambda m: m[2])
    for topic, msgtype, log_ns, raw in out:
        if MSGTYPES.get(topic) != msgtype:
            yield BagEvent("error", topic, -1, log_ns, error=f"{topic} has type {msgtype}, the contract says {MSGTYPES.get(topic)}")
            continue
        yield topic, msgtype, log_ns, raw
    if error is not None:
        yield error
