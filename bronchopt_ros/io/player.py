"""Play a rosbag2 (mcap or sqlite3) into a ROS 2 graph, like ``ros2 bag play``, for machines
without rosbag2. Messages are published as the bag's CDR bytes (no re-serialisation), at the
original timing scaled by ``rate``, optionally with ``/clock`` for ``use_sim_time``.

A damaged bag plays up to the damage; the error is logged with the position it occurred at.
"""
from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["BagPlayer", "PlayStats", "message_class"]

# Topics a late subscriber must still get (like ros2 bag play's --qos-profile-overrides for latched).
LATCHED_TOPICS = {"/initialpose"}


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


@dataclass
class PlayStats:
    published: int = 0
    skipped_topics: int = 0
    loops: int = 0
    error: str = ""


class BagPlayer:
    """Publishes a bag's messages from ``node``. ``play()`` blocks; ``start()`` runs it in a thread."""

    def __init__(self, node, bag: str | Path, rate: float = 1.0, loop: bool = False, clock: bool = False,
                 topics: list[str] | None = None, start_delay: float = 0.0, wait_for_subscribers: float = 0.0,
                 ready: Callable[[], bool] | None = None):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.node, self.bag, self.rate, self.loop, self.clock = node, Path(bag), rate, loop, clock
        self.topics = set(topics) if topics else None
        self.start_delay = start_delay
        self.wait_for_subscribers = wait_for_subscribers
        # Also waited for (within wait_for_subscribers) once the publishers exist: e.g. that the
        # receiving node has discovered them too (a publisher can see its subscriber before that
        # subscriber accepts its messages; best-effort frames sent in between are lost).
        self.ready = ready
        self.stats = PlayStats()
        self._pubs: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, "/clock", 10)
            self._clock_cls = Clock

    # ------------------------------------------------------------------ control
    def start(self) -> "BagPlayer":
        self._thread = threading.Thread(target=self.play, name="bag-player", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # ------------------------------------------------------------------ playing
    def _publisher(self, topic: str, msgtype: str):
        if topic not in self._pubs:
            try:
                cls = message_class(msgtype)
            except (ImportError, AttributeError, ValueError):
                self.node.get_logger().warning(f"replay: no message type {msgtype} here; skipping {topic}")
                self._pubs[topic] = None
                return None
            if topic in LATCHED_TOPICS:
                qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            else:
                qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self._pubs[topic] = self.node.create_publisher(cls, topic, qos)
        return self._pubs[topic]

    def _messages(self):
        from rosbags.rosbag2 import Reader

        with Reader(self.bag) as reader:
            conns = [c for c in reader.connections if self.topics is None or c.topic in self.topics]
            for conn in conns:
                self._publisher(conn.topic, conn.msgtype)
            yield from ((c.topic, t, raw) for c, t, raw in reader.messages(connections=conns))

    def _sleep_until(self, wall_deadline: float) -> None:
        while not self._stop.is_set():
            dt = wall_deadline - time.monotonic()
            if dt <= 0:
                return
            time.sleep(min(dt, 0.01))

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.wait_for_subscribers
        while time.monotonic() < deadline and not self._stop.is_set():
            pubs = [p for p in self._pubs.values() if p is not None]
            if (pubs and all(p.get_subscription_count() > 0 for p in pubs if p.topic_name != "/bronchoscope/pose_gt")
                    and (self.ready is None or self.ready())):
                return
            time.sleep(0.05)

    def play(self) -> PlayStats:
        log = self.node.get_logger()
        first = True
        try:
            while not self._stop.is_set():
                t0_bag = None
                t0_wall = None
                last_ns = None
                for topic, log_ns, raw in self._messages():
                    if first:
                        if self.wait_for_subscribers > 0:
                            self._wait_for_subscribers()
                        time.sleep(self.start_delay)
                        first = False
                    if self._stop.is_set():
                        break
                    if t0_bag is None:
                        t0_bag, t0_wall = log_ns, time.monotonic()
                    self._sleep_until(t0_wall + (log_ns - t0_bag) * 1e-9 / self.rate)
                    pub = self._pubs.get(topic)
                    if pub is None:
                        self.stats.skipped_topics += 1
                        continue
                    if self.clock:
                        c = self._clock_cls()
                        c.clock.sec, c.clock.nanosec = divmod(int(log_ns), 1_000_000_000)
                        self._clock_pub.publish(c)
                    pub.publish(bytes(raw))
                    self.stats.published += 1
                    last_ns = log_ns
                if not self.loop:
                    break
                self.stats.loops += 1
        except Exception as exc:  # a damaged bag: keep what was played, say where it stopped
            where = "before the first message" if last_ns is None else f"after the message logged at {last_ns} ns"
            self.stats.error = f"bag {self.bag} is damaged: playback stopped {where}: {type(exc).__name__}: {exc}"
            log.error(self.stats.error)
        finally:
            self.done.set()
        return self.stats
