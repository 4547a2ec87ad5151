"""``bronchopt record``: record the navigator's outputs (pose, status, TF, path) to a rosbag2 (mcap),
for later analysis (``ros2 bag record`` stand-in). Stop with Ctrl-C or ``--duration``."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_TOPICS = {
    "/bronchopt/pose": "geometry_msgs/msg/PoseStamped",
    "/bronchopt/status": "bronchopt_msgs/msg/TrackingStatus",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/bronchopt/path": "nav_msgs/msg/Path",
}


def add_parser(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description=__doc__)
    p.add_argument("--out", required=True, help="output rosbag2 folder (must not exist)")
    p.add_argument("--topics", nargs="*", default=list(DEFAULT_TOPICS)[:3],
                   help=f"topics to record (default: pose, status, tf; known: {', '.join(DEFAULT_TOPICS)})")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
    p.set_defaults(func=run)


def _typestore():
    """rosbags typestore with the ROS 2 standard types plus bronchopt_msgs (from its .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED) if hasattr(Stores, "ROS2_KILTED") else get_typestore(Stores.LATEST)
    msg_dir = None
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        cand = Path(prefix) / "share" / "bronchopt_msgs" / "msg"
        if cand.is_dir():
            msg_dir = cand
            break
    if msg_dir is None:
        msg_dir = Path(__file__).resolve().parents[2] / "bronchopt_msgs" / "msg"
    types = {}
    for f in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"bronchopt_msgs/msg/{f.stem}"))
    ts.register(types)
    return ts


class Recorder:
    """Subscribes (raw CDR) to ``topics`` and writes them to an mcap rosbag2 at ``out``."""

    def __init__(self, node, out: str | Path, topics: list[str]):
        from rclpy.qos import QoSProfile
        from rosbags.rosbag2 import StoragePlugin, Writer

        from ..io.player import message_class

        self.ts = _typestore()
        self.writer = Writer(Path(out), version=8, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.counts: dict[str, int] = {}
        self._subs = []
        for topic in topics:
            msgtype = DEFAULT_TOPICS.get(topic)
            if msgtype is None:
                raise ValueError(f"unknown topic type for {topic}; known: {', '.join(DEFAULT_TOPICS)}")
            conn = self.writer.add_connection(topic, msgtype, typestore=self.ts)
            self.counts[topic] = 0

            def cb(data: bytes, conn=conn, topic=topic):
                self.writer.write(conn, time.time_ns(), data)
                self.counts[topic] += 1

            self._subs.append(node.create_subscription(message_class(msgtype), topic, cb, QoSProfile(depth=100),
                                                       raw=True))

    def close(self) -> None:
        self.writer.close()


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ._ros import localhost_default

    localhost_default()
    if Path(args.out).exists():
        print(f"record: {args.out} exists; choose a new folder")
        return 2
    rclpy.init()
    node = rclpy.create_node("bronchopt_recorder")
    rec = Recorder(node, args.out, args.topics)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    t_end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    try:
        while rclpy.ok() and time.monotonic() < t_end:
            ex.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        rec.close()
        node.destroy_node()
        rclpy.try_shutdown()
    print("record: " + ", ".join(f"{t}: {n}" for t, n in rec.counts.items()) + f" -> {args.out}")
    return 0
