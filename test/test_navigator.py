"""The navigator and airway server on a real rclpy graph, fed a real (simulated) rosbag2 through
the bag player: poses on /bronchopt/pose and /tf for the frames, the offline tracker's accuracy,
the same poses as the offline path, YAML parameters, and the launch file."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from bronchopt_msgs.msg import TrackingStatus  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Path as PathMsg  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from bronchopt_ros.io import ros_convert as rc  # noqa: E402
from bronchopt_ros.io.player import BagPlayer  # noqa: E402
from bronchopt_ros.io.tum import read_tum  # noqa: E402
from bronchopt_ros.nodes.spin import BackgroundSpin  # noqa: E402
from bronchopt_ros.tracker import Tracker, TrackState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 24


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy
    from bronchopt_ros.sim.case import CaseParams, write_case

    out = tmp_path_factory.mktemp("nav") / "case"
    anatomy = generate_anatomy(3002, AnatomyParams(generations=3))
    write_case(out, 3002, CaseParams(n_frames=N_FRAMES, size=128, starts=False), anatomy=anatomy)
    return out


@pytest.fixture(scope="module")
def offline(case):
    from bronchopt_ros.cli.evaluate import pipeline_from_yaml
    from bronchopt_ros.evaluation import summarise, track_case

    records, errors, _ = track_case(case, pipeline_from_yaml(None), progress=False)
    assert not errors
    return records, summarise(records)


def _graph(ctx, case, nav_params=None):
    from bronchopt_ros.nodes.airway_server import AirwayServer
    from bronchopt_ros.nodes.navigator import Navigator

    server = AirwayServer(context=ctx, parameter_overrides=[Parameter("mesh_path", value=str(case / "airway.ply"))])
    params = {"relocalisation_cache": str(case.parent / "cache"), **(nav_params or {})}  # not the user's ~/.cache
    nav = Navigator(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    return server, nav


def _run_bag(ctx, case, nav_params=None, rate=0.25, pose_topic="/bronchopt/pose"):
    server, nav = _graph(ctx, case, nav_params)
    probe = Node("probe", context=ctx)
    poses, tfs, status, paths, diagnostics = {}, [], [], [], []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    probe.create_subscription(PathMsg, "/bronchopt/path", paths.append, 10)
    probe.create_subscription(PoseStamped, pose_topic, lambda m: poses.__setitem__(rc.stamp_to_ns(m.header.stamp), m), 100)
    probe.create_subscription(TFMessage, "/tf", lambda m: tfs.extend(m.transforms), 100)
    probe.create_subscription(TrackingStatus, "/bronchopt/status", status.append, 100)
    ex = MultiThreadedExecutor(num_threads=3, context=ctx)
    for n in (server, nav, probe):
        ex.add_node(n)
    spin = BackgroundSpin.start(ex)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and nav.tracker is None:
            time.sleep(0.1)
        assert nav.tracker is not None, "navigator never got the mesh"
        player = BagPlayer(probe, case / "procedure", rate=rate, wait_for_subscribers=20.0).start()
        assert player.done.wait(120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and nav.counters["processed"] + nav.counters["dropped"] < N_FRAMES:
            time.sleep(0.1)
        deadline = time.monotonic() + 2.0 + nav.path_period  # the timer sends the path's last poses
        while time.monotonic() < deadline and not (paths and len(paths[-1].poses) >= len(poses)):
            time.sleep(0.1)
        deadline = time.monotonic() + 5.0  # (the timer's next /diagnostics after the last frame)
        n = len(diagnostics)
        while time.monotonic() < deadline and len(diagnostics) <= n:
            time.sleep(0.1)
        return nav, poses, tfs, status, player, paths, diagnostics
    finally:
        spin.stop()
        for n in (server, nav, probe):
            n.destroy_node()


def test_bag_through_the_graph_matches_offline(ros_context, case, offline):
    records, offline_metrics = offline
    # Slow enough that even the first frame (the initialisation search) ends before the next one.
    nav, poses, tfs, status, player, paths, diagnostics = _run_bag(ros_context, case, rate=0.05,
                                                      nav_params={"path_publish_period": 2.0})
    assert not player.stats.error
    stamps, truth = read_tum(case / "truth.tum")
    # Every frame processed at this rate (no drops) -> a pose for each frame that was tracked.
    assert nav.counters["dropped"] == 0
    assert len(poses) == sum(1 for r in records if r.state == 1)
    assert len(poses) >= 0.8 * N_FRAMES
    errs = []
    for t, gt in zip(stamps, truth):
        m = next((v for k, v in poses.items() if abs(k * 1e-9 - t) < 1e-3), None)
        if m is not None:
            errs.append(rc.pose_from_msg(m).translation_error(gt))
            assert m.header.frame_id == "ct"
    # Same accuracy as the offline tracker: the same poses, frame for frame.
    off = {round(r.stamp * 1e3): r.pose for r in records if r.state == 1}  # ms keys (float stamps)
    for ns, m in poses.items():
        assert rc.pose_from_msg(m).translation_error(off[round(ns * 1e-6)]) < 1e-6
    assert abs(np.mean(errs) * 1e3 - offline_metrics["trans_err_mm_mean"]) < 0.05 or len(errs) != len(records)
    # TF ct -> bronchoscope_optical_frame for the published poses.
    assert len(tfs) >= len(poses)
    assert all(t.header.frame_id == "ct" and t.child_frame_id == "bronchoscope_optical_frame" for t in tfs)
    # The path: sent at most every path_publish_period (2 s: ~every third pose here), the last
    # message holding every published pose.
    assert 2 <= len(paths) < 0.6 * len(poses)
    assert [rc.stamp_to_ns(p.header.stamp) for p in paths[-1].poses] == sorted(poses)
    # The status reports the work and the backends.
    last = status[-1]
    assert last.frames_processed == N_FRAMES and last.renderer_backend and last.encoder_backend
    assert last.state_name == TrackState(last.state).name
    assert all(s.header.frame_id == "ct" for s in status)  # (the frame of the pose it describes)
    # /diagnostics carries the tracker's counters (after the last frame: its final counts).
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert values["state"] == status[-1].state_name
    assert int(values["processed"]) == N_FRAMES
    assert values["video_gaps"] == values["video_frames_missing"] == "0"  # (the bag's video lost none)
    assert set(nav.tracker.counters()) == set(Tracker.COUNTERS)
    for key, count in nav.tracker.counters().items():
        assert int(values[key]) == count == getattr(nav.tracker, key), key


def test_yaml_parameters_take_effect(ros_context, case, tmp_path):
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "navigator.yaml").read_text())
    cfg["navigator"]["ros__parameters"]["pose_topic"] = "/custom/pose"
    cfg["navigator"]["ros__parameters"]["tracker"]["pyramid"] = [20, 40]
    cfg["navigator"]["ros__parameters"]["tracker"]["iterations"] = [5, 3]
    path = tmp_path / "nav.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(path)])
    try:
        nav, poses, _, _, _, _, _ = _run_bag(ctx, case, rate=0.5, pose_topic="/custom/pose")
        assert nav.pose_topic == "/custom/pose"
        assert nav.pipeline.tracker.pyramid == (20, 40)
        assert len(poses) > 0
    finally:
        ctx.try_shutdown()


def test_launch_file_parses():
    launch = pytest.importorskip("launch", reason="ROS 2 launch is not installed here")
    if not hasattr(launch, "LaunchDescription"):
        pytest.skip("the 'launch' on this machine is not ROS 2's")
    import importlib.util

    spec = importlib.util.spec_from_file_location("navigate_launch", ROOT / "launch" / "navigate.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert len(ld.entities) >= 8


def test_navigate_stops_when_a_node_process_dies(case, tmp_path):
    """``bronchopt navigate --multi-process`` with a navigator that cannot start (a parameter out of
    its declared range): a clear message and a non-zero exit soon, not a wait of minutes."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "bronchopt"
    t0 = time.monotonic()
    done = subprocess.run([str(exe), "navigate", "--case", str(case), "--multi-process", "--out", str(tmp_path),
                           "-p", "tracker.lost_after:=0"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "the navigator process exited" in done.stderr
    assert time.monotonic() - t0 < 60
