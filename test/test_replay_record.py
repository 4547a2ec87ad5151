"""``bronchopt replay`` (the bag player) and ``bronchopt record`` on a real rclpy graph: a simulated
case bag with raw and compressed images is played at a rate with /clock and a latched
/initialpose; the recorder writes the navigator's output topics to an mcap bag that rosbags reads."""
from __future__ import annotations

import time

import pytest

from conftest import spin_until

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from bronchopt_msgs.msg import TrackingStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

N = 12


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy
    from bronchopt_ros.sim.case import CaseParams, write_case

    out = tmp_path_factory.mktemp("replay") / "case"
    write_case(out, 3006, CaseParams(n_frames=N, size=64, starts=False, compressed="jpeg"),
               anatomy=generate_anatomy(3006, AnatomyParams(generations=2)))
    return out


def test_replay_rate_clock_compressed_and_latched_initialpose(executor, ros_context, case):
    from bronchopt_ros.io.player import BagPlayer

    node = Node("player", context=ros_context)
    probe = Node("probe", context=ros_context)
    got = {"img": 0, "jpg": 0, "info": 0, "clock": []}
    probe.create_subscription(Image, "/bronchoscope/image_raw", lambda m: got.__setitem__("img", got["img"] + 1), 50)
    probe.create_subscription(CompressedImage, "/bronchoscope/image_raw/compressed",
                              lambda m: got.__setitem__("jpg", got["jpg"] + 1), 50)
    probe.create_subscription(CameraInfo, "/bronchoscope/camera_info", lambda m: got.__setitem__("info", got["info"] + 1), 50)
    probe.create_subscription(Clock, "/clock", lambda m: got["clock"].append(m.clock.sec + 1e-9 * m.clock.nanosec), 50)
    for n in (node, probe):
        executor.add_node(n)
    player = BagPlayer(node, case / "procedure", rate=0.5, clock=True, wait_for_subscribers=5.0)
    t0 = time.monotonic()
    player.start()
    assert spin_until(executor, lambda: got["img"] >= N and got["jpg"] >= N and got["info"] >= N, 30.0), got
    elapsed = time.monotonic() - t0
    # 12 frames at 30 fps span 0.37 s; at rate 0.5 playing takes at least 0.73 s.
    assert elapsed >= (N - 1) / 30.0 / 0.5 * 0.95
    assert len(got["clock"]) >= N and got["clock"] == sorted(got["clock"])
    # A late subscriber still gets the latched /initialpose.
    late = Node("late", context=ros_context)
    poses = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    late.create_subscription(PoseWithCovarianceStamped, "/initialpose", poses.append, qos)
    executor.add_node(late)
    assert spin_until(executor, lambda: len(poses) == 1, 10.0)
    assert poses[0].header.frame_id == "ct"
    player.stop()
    assert player.stats.published >= 3 * N + 1 and not player.stats.error


def test_replay_waits_until_the_receiver_is_ready(executor, ros_context, case):
    """``ready`` holds the bag back (e.g. until the navigator has discovered the player: frames
    sent before would be lost and the latched /initialpose would start it on a later frame)."""
    from bronchopt_ros.io.player import BagPlayer

    node = Node("player", context=ros_context)
    probe = Node("probe", context=ros_context)
    got = []
    probe.create_subscription(Image, "/bronchoscope/image_raw", got.append, 50)
    for n in (node, probe):
        executor.add_node(n)
    gate = {"open": False}
    player = BagPlayer(node, case / "procedure", wait_for_subscribers=20.0, ready=lambda: gate["open"]).start()
    # (the probe's subscription matches within this; without the gate the bag would have played)
    assert not spin_until(executor, lambda: len(got) > 0, 2.0)
    gate["open"] = True
    assert spin_until(executor, lambda: len(got) >= N, 20.0), len(got)
    player.stop()
    assert not player.stats.error


def test_record_writes_a_bag_rosbags_reads(executor, ros_context, tmp_path):
    from rosbags.rosbag2 import Reader

    from bronchopt_ros.cli.record import Recorder

    node = Node("recorder", context=ros_context)
    pub_node = Node("outputs", context=ros_context)
    rec = Recorder(node, tmp_path / "run", ["/bronchopt/pose", "/bronchopt/status"])
    pose_pub = pub_node.create_publisher(PoseStamped, "/bronchopt/pose", 10)
    status_pub = pub_node.create_publisher(TrackingStatus, "/bronchopt/status", 10)
    for n in (node, pub_node):
        executor.add_node(n)
    assert spin_until(executor, lambda: pose_pub.get_subscription_count() > 0 and status_pub.get_subscription_count() > 0)
    for k in range(5):
        m = PoseStamped()
        m.header.frame_id = "ct"
        m.pose.position.x = float(k)
        m.pose.orientation.w = 1.0
        pose_pub.publish(m)
        s = TrackingStatus()
        s.state = TrackingStatus.TRACKING
        status_pub.publish(s)
        spin_until(executor, lambda: False, 0.05)
    assert spin_until(executor, lambda: rec.counts["/bronchopt/pose"] == 5 and rec.counts["/bronchopt/status"] == 5, 10.0)
    rec.close()
    with Reader(tmp_path / "run") as r:
        counts = {c.topic: c.msgcount for c in r.connections}
    assert counts == {"/bronchopt/pose": 5, "/bronchopt/status": 5}
