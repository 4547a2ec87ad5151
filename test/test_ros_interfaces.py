"""The venv's ROS 2 (kilted wheels) and our interface package, on a real rclpy graph."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import spin_until

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from bronchopt_msgs.msg import AirwayBranch, AirwayMesh, TrackingStatus  # noqa: E402
from bronchopt_msgs.srv import GetAirwayMesh  # noqa: E402
from geometry_msgs.msg import Point  # noqa: E402


def _status() -> TrackingStatus:
    msg = TrackingStatus()
    msg.header.frame_id = "bronchoscope_optical_frame"
    msg.header.stamp.sec = 12
    msg.state = TrackingStatus.RELOCALISING
    msg.similarity = 0.875
    msg.iterations = 7
    msg.processing_latency_ms = 21.5
    msg.frames_dropped = 3
    msg.renderer_backend = "cpu-embree"
    msg.encoder_backend = "onnxruntime"
    return msg


def _branch(i: int) -> AirwayBranch:
    b = AirwayBranch()
    b.id, b.parent, b.generation = i, i - 1, i
    b.points = [Point(x=0.001 * k, y=0.0, z=-0.01 * i) for k in range(4)]
    b.radii = [0.004, 0.004, 0.0035, 0.003]
    return b


def _mesh() -> AirwayMesh:
    msg = AirwayMesh()
    msg.header.frame_id = "ct"
    msg.vertices = np.arange(12, dtype=np.float32).tolist()
    msg.triangles = [0, 1, 2, 1, 2, 3]
    msg.centerline = [_branch(0), _branch(1)]
    msg.source = "unit-test"
    return msg


def test_venv_imports_ros_and_interfaces():
    import tf2_msgs.msg  # real package or our stand-in from .overlay/

    assert TrackingStatus.TRACKING != TrackingStatus.LOST
    states = {TrackingStatus.INITIALISING, TrackingStatus.TRACKING, TrackingStatus.LOST,
              TrackingStatus.RELOCALISING, TrackingStatus.WAITING_FOR_MESH,
              TrackingStatus.WAITING_FOR_CAMERA_INFO}
    assert len(states) == 6
    assert hasattr(tf2_msgs.msg.TFMessage(), "transforms")


@pytest.mark.parametrize("make", [_status, lambda: _branch(1), _mesh],
                         ids=["TrackingStatus", "AirwayBranch", "AirwayMesh"])
def test_pub_sub_round_trip(executor, ros_context, make):
    sent = make()
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub_node = Node("rt_pub", context=ros_context)
    sub_node = Node("rt_sub", context=ros_context)
    executor.add_node(pub_node)
    executor.add_node(sub_node)
    received = []
    pub = pub_node.create_publisher(type(sent), "/test/round_trip", qos)
    sub_node.create_subscription(type(sent), "/test/round_trip", received.append, qos)
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)
    pub.publish(sent)
    assert spin_until(executor, lambda: len(received) > 0, 10.0)
    assert received[0] == sent


def test_service_round_trip(executor, ros_context):
    server = Node("mesh_server", context=ros_context)
    client_node = Node("mesh_client", context=ros_context)
    executor.add_node(server)
    executor.add_node(client_node)
    calls = []

    def handle(request, response):
        calls.append(request)
        response.success = True
        response.message = "ok"
        response.mesh = _mesh()
        return response

    server.create_service(GetAirwayMesh, "/test/get_mesh", handle)
    client = client_node.create_client(GetAirwayMesh, "/test/get_mesh")
    assert spin_until(executor, client.service_is_ready, 10.0)
    future = client.call_async(GetAirwayMesh.Request())
    assert spin_until(executor, future.done, 10.0)
    result = future.result()
    assert result.success and result.message == "ok"
    assert result.mesh == _mesh()
    assert len(calls) == 1


def test_background_spin_stops_cleanly_under_a_busy_executor(ros_context):
    """BackgroundSpin runs the callbacks and stops without the spin thread dying on a shut-down
    thread pool (Thread(target=executor.spin) + executor.shutdown() raced there)."""
    import threading
    import time

    from rclpy.executors import MultiThreadedExecutor

    from bronchopt_ros.nodes.spin import BackgroundSpin

    errors = []
    old_hook = threading.excepthook
    threading.excepthook = lambda a: errors.append(a.exc_value)
    try:
        for _ in range(5):
            ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
            node = Node("spin_probe", context=ros_context)
            ticks = []
            node.create_timer(0.001, lambda: ticks.append(1))
            ex.add_node(node)
            spin = BackgroundSpin.start(ex)
            deadline = time.monotonic() + 10.0
            while len(ticks) < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            spin.stop()
            assert not spin.thread.is_alive()
            assert len(ticks) >= 20
            node.destroy_node()
    finally:
        threading.excepthook = old_hook
    assert errors == []


def test_background_spin_survives_nodes_removed_while_spinning(ros_context):
    """Removing and destroying a node while the executor spins killed the spin thread (rclpy
    InvalidHandle, "destruction was requested": ros2/rclpy#1355); BackgroundSpin goes on, so the
    other nodes' callbacks keep running (an airway server restarting beside a navigator)."""
    import threading
    import time

    from rclpy.executors import MultiThreadedExecutor
    from std_msgs.msg import String

    from bronchopt_ros.nodes.spin import BackgroundSpin

    errors = []
    old_hook = threading.excepthook
    threading.excepthook = lambda a: errors.append(a.exc_value)
    ex = MultiThreadedExecutor(num_threads=3, context=ros_context)
    keeper = Node("spin_keeper", context=ros_context)
    ticks = []
    keeper.create_timer(0.002, lambda: ticks.append(1))
    ex.add_node(keeper)
    spin = BackgroundSpin.start(ex, period_s=0.001)
    try:
        for i in range(300):  # (without the catch, the loop died within ~5-70 here)
            node = Node(f"spin_victim_{i}", context=ros_context)
            node.create_subscription(String, "/spin_probe", lambda m: None, 10)
            pub = node.create_publisher(String, "/spin_probe", 10)
            node.create_timer(0.001, lambda pub=pub: pub.publish(String(data="x")))
            ex.add_node(node)
            time.sleep(0.001 * (i % 7))
            ex.remove_node(node)
            node.destroy_node()
            assert spin.thread.is_alive(), f"the spin thread died after {i} nodes: {errors}"
        n = len(ticks)
        deadline = time.monotonic() + 5.0
        while len(ticks) < n + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spin.thread.is_alive() and len(ticks) >= n + 20
    finally:
        spin.stop()
        keeper.destroy_node()
        threading.excepthook = old_hook
    assert errors == []


def test_background_spin_fetches_callbacks_that_end_after_its_last_turn(ros_context):
    """A callback still running when the loop stops (a node destroyed under it at teardown) used to
    leave its exception unfetched, and rclpy printed "The following exception was never retrieved"
    when the task was collected (after pytest's summary). stop() fetches them: the teardown's
    InvalidHandle silently, any other error returned and logged."""
    import threading

    from rclpy.exceptions import InvalidHandle
    from rclpy.executors import MultiThreadedExecutor

    from bronchopt_ros.nodes.spin import BackgroundSpin

    for error, expected in ((InvalidHandle("destruction was requested"), []), (RuntimeError("boom"), ["boom"])):
        ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
        node = Node("spin_late", context=ros_context)
        started, release, calls = threading.Event(), threading.Event(), []

        def late(error=error, started=started, release=release, calls=calls):
            calls.append(1)
            if len(calls) == 1:
                started.set()
                release.wait(5.0)
                raise error

        node.create_timer(0.01, late)
        ex.add_node(node)
        spin = BackgroundSpin.start(ex, period_s=0.01)
        assert started.wait(10.0)
        threading.Timer(0.3, release.set).start()  # ends while stop() waits for the executor's threads
        failed = spin.stop()
        assert [str(e) for e in failed] == expected
        # what rclpy's Task.__del__ checks before printing (white box: the executor's own list)
        ended = [t for t in ex._futures if t.done() and t._exception is not None]
        assert len(ended) == 1 and all(t._exception_fetched for t in ended)
        node.destroy_node()
