"""Bad input, overload and faults on the real rclpy graph (issue 8): every bad message is counted
and logged, never fatal; a flood keeps the latency bounded by dropping old frames; the navigator
follows an airway server restart with a new mesh, survives its own restart, and waits for a late
camera_info."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import trimesh

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from bronchopt_msgs.msg import TrackingStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from bronchopt_ros.io import ros_convert as rc  # noqa: E402
from bronchopt_ros.io.bag import read_case_bag  # noqa: E402
from bronchopt_ros.io.image import numpy_to_image  # noqa: E402
from bronchopt_ros.nodes.spin import BackgroundSpin  # noqa: E402

# A small solver everywhere: when tracking and for (re)initialisation / the LOST search (the
# latter had been left at the full 16/32/64 pyramid, whose wide search took ~1 s a frame and made
# the flood test's latency bound flaky).
FAST = {"tracker.pyramid": [16, 32], "tracker.iterations": [4, 3], "tracker.init_pyramid": [16, 32],
        "tracker.init_iterations": [4, 3], "relocalisation": False, "encoder_backend": "torch"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy
    from bronchopt_ros.sim.case import CaseParams, write_case

    out = tmp_path_factory.mktemp("robust") / "case"
    write_case(out, 3003, CaseParams(n_frames=20, size=96, starts=False),
               anatomy=generate_anatomy(3003, AnatomyParams(generations=3)))
    frames, camera, init = [], None, None
    for ev in read_case_bag(out / "procedure"):
        if ev.kind == "camera_info":
            camera = ev.data
        elif ev.kind == "image":
            frames.append(ev.data)
        elif ev.kind == "initialpose":
            init = ev.data
    return {"dir": out, "frames": frames, "camera": camera, "init": init}


def caminfo(cam, stamp) -> CameraInfo:
    m = CameraInfo()
    m.header.stamp, m.header.frame_id = stamp, "bronchoscope_optical_frame"
    m.width, m.height = cam.width, cam.height
    m.distortion_model, m.d = "plumb_bob", [0.0] * 5
    m.k = [cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0]
    m.r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    m.p = [cam.fx, 0.0, cam.cx, 0.0, 0.0, cam.fy, cam.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return m


class Feeder:
    """Publishes frames, camera_info and /initialpose like a camera driver would; listens to the outputs."""

    def __init__(self, ctx):
        self.node = Node("feeder", context=ctx)
        self.img = self.node.create_publisher(Image, "/bronchoscope/image_raw", 10)
        self.info = self.node.create_publisher(CameraInfo, "/bronchoscope/camera_info", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.init = self.node.create_publisher(PoseWithCovarianceStamped, "/initialpose", latched)
        self.poses, self.status = [], []
        self.node.create_subscription(PoseStamped, "/bronchopt/pose", self.poses.append, 100)
        self.node.create_subscription(TrackingStatus, "/bronchopt/status", self.status.append, 100)

    def now(self):
        return self.node.get_clock().now().to_msg()

    def frame(self, rgb, cam, stamp=None, info=True):
        stamp = stamp or self.now()
        if info:
            self.info.publish(caminfo(cam, stamp))
        h = Image().header
        h.stamp, h.frame_id = stamp, "bronchoscope_optical_frame"
        self.img.publish(numpy_to_image(rgb, "rgb8", header=h, msg_type=Image))
        return stamp

    def raw(self, **fields):
        m = Image()
        m.header.stamp = self.now()
        for k, v in fields.items():
            setattr(m, k, v)
        self.img.publish(m)


class Graph:
    def __init__(self, ctx, mesh, nav_params=None):
        self.ctx = ctx
        self.ex = MultiThreadedExecutor(num_threads=3, context=ctx)
        self.server = self.nav = None
        self.feeder = Feeder(ctx)
        self.ex.add_node(self.feeder.node)
        self.start_server(mesh)
        self.start_nav(nav_params)
        self.spin = BackgroundSpin.start(self.ex)

    def start_server(self, mesh):
        from bronchopt_ros.nodes.airway_server import AirwayServer

        self.server = AirwayServer(context=self.ctx, parameter_overrides=[Parameter("mesh_path", value=str(mesh))])
        self.ex.add_node(self.server)

    def stop_server(self):
        self.ex.remove_node(self.server)
        self.server.destroy_node()

    def start_nav(self, params=None):
        from bronchopt_ros.nodes.navigator import Navigator

        p = {**FAST, **(params or {})}
        self.nav = Navigator(context=self.ctx, parameter_overrides=[Parameter(k, value=v) for k, v in p.items()])
        self.ex.add_node(self.nav)

    def stop_nav(self):
        self.ex.remove_node(self.nav)
        self.nav.destroy_node()

    def close(self):
        self.spin.stop()
        for n in (self.server, self.nav, self.feeder.node):
            try:
                n.destroy_node()
            except Exception:  # noqa: BLE001
                pass


def wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def feed_until(pred, send, timeout=60.0, every=0.5):
    """``send()`` every ``every`` s until ``pred()`` holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        send()
        if wait(pred, every):
            return True
    return bool(pred())


def test_bad_input_is_counted_and_survived(ros_context, case):
    g = Graph(ros_context, case["dir"] / "airway.ply")
    f, nav, cam, rgb = g.feeder, g.nav, case["camera"], case["frames"]
    try:
        assert wait(lambda: nav.tracker is not None)
        # An image before any camera_info: waits, counts the drop.
        f.frame(rgb[0], cam, info=False)
        assert wait(lambda: any(s.state == TrackingStatus.WAITING_FOR_CAMERA_INFO for s in f.status))
        # camera_info with a zero / NaN K: rejected.
        bad = caminfo(cam, f.now())
        bad.k = [0.0] * 9
        f.info.publish(bad)
        bad2 = caminfo(cam, f.now())
        bad2.k = [math.nan] * 9
        f.info.publish(bad2)
        assert wait(lambda: nav.counters["rejected"] >= 2)
        # /initialpose with a NaN or a non-unit quaternion, or in the wrong frame: ignored.
        for q, frame_id in (((math.nan, 0, 0, 1), "ct"), ((0, 0, 0, 3.0), "ct"), ((0, 0, 0, 1), "map")):
            m = rc.initial_pose_msg(case["init"], f.now())
            m.pose.pose.orientation.x, m.pose.pose.orientation.y, m.pose.pose.orientation.z, m.pose.pose.orientation.w = \
                (float(v) for v in q)
            m.header.frame_id = frame_id
            f.init.publish(m)
        assert wait(lambda: nav.counters["bad_initialpose"] >= 3)
        f.init.publish(rc.initial_pose_msg(case["init"], f.now()))
        assert wait(lambda: nav.tracker.initialised)
        # Broken images: unsupported encoding, short data, zero size, size != camera_info.
        n0 = nav.counters["rejected"]
        f.info.publish(caminfo(cam, f.now()))
        time.sleep(0.3)
        f.raw(height=4, width=4, encoding="32FC7", step=16 * 7, data=bytes(4 * 4 * 28))
        time.sleep(0.3)
        f.raw(height=96, width=96, encoding="rgb8", step=288, data=bytes(100))
        time.sleep(0.3)
        f.raw(height=0, width=0, encoding="rgb8", step=0, data=b"")
        time.sleep(0.3)
        f.frame(np.zeros((50, 70, 3), np.uint8), cam, info=False)
        assert wait(lambda: nav.counters["rejected"] >= n0 + 4), nav.counters
        # ... and the node still tracks good frames afterwards.
        n_pose = len(f.poses)
        for im in rgb[:3]:
            f.frame(im, cam)
            time.sleep(0.4)
        assert wait(lambda: len(f.poses) > n_pose)
        # The first of them came >= 1.2 s after the /initialpose's stamp (the broken images
        # between): the scope may have moved since; warned and counted, once.
        assert nav.counters["stale_initialpose"] == 1
        # Stamps going backwards (a bag loop): the trajectory resets, no crash.
        t_old = f.now()
        t_old.sec -= 100
        f.frame(rgb[3], cam, stamp=t_old)
        assert wait(lambda: nav.counters["stamp_resets"] >= 1)
        # Frames the video itself lost (a gap in the stamps of a 30 frames/s stream): counted apart
        # from the node's own drops - 3 missing before the last of these.
        gaps0, missing0 = nav._video_gaps.gaps, nav._video_gaps.missing
        for k in (1, 2, 3, 4, 5, 6, 7, 11):
            t = type(t_old)()
            ns = t_old.sec * 10**9 + t_old.nanosec + round(k * 1e9 / 30)
            t.sec, t.nanosec = divmod(ns, 10**9)
            f.frame(rgb[k % len(rgb)], cam, stamp=t)
            time.sleep(0.05)
        assert wait(lambda: nav._video_gaps.gaps == gaps0 + 1), nav.counters
        assert nav._video_gaps.missing == missing0 + 3
        assert nav._worker.is_alive()
        last = f.status[-1]
        assert last.frames_rejected >= 7 and last.frames_dropped >= 1
    finally:
        g.close()


def start_tracking(g, case):
    """Initialise the navigator from /initialpose and let it track frames 0-3, each processed
    before the next is sent. The first is sent again until processed, as a camera streams: its
    camera_info and image arrive on two subscriptions, and an image handled first may be dropped."""
    f, nav, cam, rgb = g.feeder, g.nav, case["camera"], case["frames"]
    assert wait(lambda: nav.tracker is not None)
    f.init.publish(rc.initial_pose_msg(case["init"], f.now()))
    assert wait(lambda: nav.tracker.initialised)
    assert feed_until(lambda: nav.counters["processed"] >= 1, lambda: f.frame(rgb[0], cam))
    for im in rgb[1:4]:
        n = nav.counters["processed"]
        f.frame(im, cam)
        wait(lambda: nav.counters["processed"] > n, 10)


def test_flood_keeps_latency_bounded(ros_context, case):
    from dataclasses import replace

    # The yardstick is a frame's whole work, its registration included: the first frames are
    # registered before their poses go out; then the flood meets the default, pipelined tracker
    # (whose worker time alone leaves the registration out).
    g = Graph(ros_context, case["dir"] / "airway.ply", {"tracker.pipelined": False})
    f, nav, cam, rgb = g.feeder, g.nav, case["camera"], case["frames"]
    try:
        start_tracking(g, case)
        # Measure the processing rate, then send frames 4x faster than that for ~4 s.
        proc_s = float(np.median(list(nav.lat_proc))) / 1e3
        nav.tracker.config = replace(nav.tracker.config, pipelined=True)
        period = max(proc_s / 4.0, 0.002)
        # The frames sweep back and forth over 4..11 (a scope moved in and out), so the motion
        # stays continuous and the flood tests the queue, not a jump in the video.
        sweep = list(range(4, 12)) + list(range(10, 4, -1))
        sent = 0
        first = nav.counters["processed"]
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            f.frame(rgb[sweep[sent % len(sweep)]], cam)
            sent += 1
            time.sleep(period)
        before = nav.counters["processed"]
        wait(lambda: nav.counters["processed"] + nav.counters["dropped"] >= 4 + sent, 20)
        c = nav.counters
        assert c["processed"] - before <= 2  # nothing queued up behind the flood
        assert c["dropped"] >= sent // 3, c  # most of the flood was dropped, newest first
        n = c["processed"] - first  # frames processed during the flood
        assert n >= 5, c
        # Newest wins: the frame the worker takes when it gets free is the newest, which came
        # during the worker's last cycle, so a frame's image-to-pose latency is at most that
        # cycle plus its own (a cycle: from one pose out to the next) - whatever a cycle costs -
        # plus the message's delivery (100 ms: loaded cores; a queue would be seconds behind).
        lat = np.array(list(nav.lat_img)[-n:])
        pose_out = np.array(list(nav.proc_times)[-(n + 1):])  # (appended with lat_img, one per frame)
        cycles_ms = 1e3 * np.diff(pose_out)
        two_cycles = cycles_ms[1:] + cycles_ms[:-1]
        assert np.all(lat[1:] < two_cycles + 100), (lat, cycles_ms)
        # ... and the cycles stay bounded: a frame's work plus the skipped frames its odometry
        # follows, which take at most the share s of the gap since the last processed frame
        # (tracker.catch_up_*_share), so a cycle settles near 1 / (1 - s) frames' work. (Single
        # cycles run longer where a frame goes to the search - 120-240 ms in this flood, whose
        # sweep turns back and forth - so the median is held to it.)
        cfg = nav.tracker.config
        share = max(cfg.catch_up_time_share, cfg.catch_up_fast_share)
        assert np.median(cycles_ms) < 1e3 * proc_s / (1.0 - share) + 50, (cycles_ms, proc_s)
        assert np.percentile(lat, 95) < 1000, lat
        assert f.status[-1].frames_dropped >= sent // 3
    finally:
        g.close()


def test_latency_budget_lets_a_stale_frame_go_for_the_next(ros_context, case):
    """Frames a little faster than the node processes them: with a latency budget the worker, when
    the newest frame has waited too long, waits for the next one and takes that (counted; the old
    one dropped) - and keeps processing."""
    from dataclasses import replace

    # Each frame registered before its pose goes out, so a frame's time is its (padded) encoder's:
    # pipelined, the worker's time is the odometry's and the padded encoder runs beside it. The
    # budget acts only while TRACKING, and this test is about the queue: the tracker is kept from
    # declaring itself lost (lost_below 0), which on this short, fast 96 px fixture it did in ~1 of 8
    # runs (the estimate drifts: see docs/performance-notes.md, session 29). Nor does it recheck a
    # badly fitting frame (recheck_si 0): a recheck's ~0.1 s on some frames made their cost
    # bimodal, the pacing below assumes one cost (a fresh clone's run in session 32).
    g = Graph(ros_context, case["dir"] / "airway.ply", {"tracker.pipelined": False, "tracker.lost_below": 0.0,
                                                         "tracker.recheck_si": 0.0})
    f, nav, cam, rgb = g.feeder, g.nav, case["camera"], case["frames"]
    try:
        start_tracking(g, case)
        # Every frame made to cost about the same (the encoder padded to 0.2 s): the test paces its
        # frames by the frame time, which on shared cores varies by +-30 % from frame to frame.
        real = nav.tracker.predictor

        def steady(frame):
            t0 = time.monotonic()
            out = real(frame)
            time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))
            return out

        nav.tracker.predictor = steady
        nav.tracker._tracking_times.clear()
        for im in rgb[4:7]:  # three more, one at a time: the tracker learns what a frame costs
            n = nav.counters["processed"]
            f.frame(im, cam)
            wait(lambda: nav.counters["processed"] > n, 10)
        busy = float(np.median(nav.tracker._tracking_times))
        # A budget this frame time can meet; frames every 0.85 of it: a frame that waited more than
        # 0.55 of a frame time would miss it, and the next (due within the period) would not. (The
        # node's own guard - waiting must not skip every second frame - holds while its frames
        # take at most 1.2x this time. An event simulation of this schedule, test_evaluation's
        # _simulated_worker, waits at least once in 300 of 300 runs with the cost known to 3 %.)
        nav.tracker.config = replace(nav.tracker.config, latency_budget_s=1.55 * busy)
        n0, w0, d0 = nav.counters["processed"], nav.counters["waited_for_newer"], nav.counters["dropped"]
        for im in rgb[7:]:
            f.frame(im, cam)
            time.sleep(0.85 * busy)
        assert wait(lambda: nav.counters["processed"] + nav.counters["dropped"] >= n0 + d0 + len(rgb[7:]), 20)
        c = nav.counters
        assert c["waited_for_newer"] > w0, (c, nav.tracker.state, busy, list(nav.tracker._tracking_times),
                                            list(np.diff(nav._arrivals)))
        assert c["processed"] > n0 and nav._worker.is_alive()
    finally:
        g.close()


def test_server_and_navigator_restart(ros_context, case, tmp_path):
    mesh_b = tmp_path / "airway_b.ply"
    m = trimesh.load(case["dir"] / "airway.ply")
    m.subdivide().export(mesh_b)  # the same airway, 4x the triangles: a new mesh to pick up
    g = Graph(ros_context, case["dir"] / "airway.ply")
    f, cam, rgb = g.feeder, case["camera"], case["frames"]
    try:
        assert wait(lambda: g.nav.tracker is not None)
        faces_a = len(g.nav.airway.faces)
        f.init.publish(rc.initial_pose_msg(case["init"], f.now()))  # latched: also for later navigators
        assert wait(lambda: g.nav.tracker.initialised)
        for im in rgb[:2]:
            f.frame(im, cam)
            time.sleep(0.4)
        assert wait(lambda: len(f.poses) >= 1)
        # The airway server restarts with a different mesh: the navigator takes it.
        g.stop_server()
        g.start_server(mesh_b)
        assert wait(lambda: g.nav.airway is not None and len(g.nav.airway.faces) == 4 * faces_a, 90)
        # The navigator restarts mid-procedure: the new one gets the latched mesh and /initialpose
        # and tracks again.
        g.stop_nav()
        g.start_nav()
        assert wait(lambda: g.nav.tracker is not None and g.nav.tracker.initialised, 90)
        n = len(f.poses)
        for im in rgb[2:5]:
            f.frame(im, cam)
            time.sleep(0.4)
        assert wait(lambda: len(f.poses) > n)
    finally:
        g.close()
