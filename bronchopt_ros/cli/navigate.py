"""``bronchopt navigate``: start the navigation graph (airway server + navigator [+ bag playback])
from config/*.yaml, where ``ros2 launch`` is not available (``ros2 launch bronchopt_ros
navigate.launch.py`` is the same graph on a ROS 2 install).

``--demo`` writes a synthetic procedure (test-split anatomy and appearance; cached under
out/demo), plays it through the real graph and prints the accuracy and rate at the end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEMO_SEED = 3000


def add_parser(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mesh", help="airway mesh (STL/PLY/OBJ, mm) or CT (NIfTI); default: the case's airway.ply")
    p.add_argument("--mesh-units", default=None, help="unit of the mesh file (default from config: mm)")
    p.add_argument("--bag", help="rosbag2 to play into the graph (a case's procedure/ folder)")
    p.add_argument("--case", help="a case folder (airway.ply + procedure/ + truth.tum): mesh, bag and scoring")
    p.add_argument("--rate", type=float, default=1.0, help="bag playback rate factor")
    p.add_argument("--loop", action="store_true", help="loop the bag")
    p.add_argument("--demo", action="store_true", help="run the synthetic demo procedure and print the scores")
    p.add_argument("--demo-frames", type=int, default=240, help="frames of the demo procedure")
    p.add_argument("--out", default="out/demo", help="where the demo case and results go")
    p.add_argument("--navigator-config", help="navigator YAML (default config/navigator.yaml)")
    p.add_argument("--airway-config", help="airway server YAML (default config/airway_server.yaml)")
    p.add_argument("--multi-process", action="store_true", help="run each node in its own process")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="override a navigator parameter, e.g. -p tracker.hypotheses:=3")
    p.set_defaults(func=run)


def _ensure_demo_case(out: Path, frames: int) -> Path:
    case = out / "case"
    if (case / "case.json").exists() and (case / "procedure").exists():
        info = json.loads((case / "case.json").read_text())
        if info.get("frames", info.get("n_frames")) == frames:
            print(f"demo: reusing the synthetic procedure in {case}")
            return case
    from ..sim.anatomy import generate_anatomy
    from ..sim.case import CaseParams, write_case

    print(f"demo: writing a synthetic procedure ({frames} frames, anatomy seed {DEMO_SEED}) to {case}")
    import shutil

    shutil.rmtree(case, ignore_errors=True)
    anatomy = generate_anatomy(DEMO_SEED)
    write_case(case, DEMO_SEED, CaseParams(n_frames=frames), anatomy=anatomy, progress=True)
    return case


class ResultCollector:
    """Collects /bronchopt/pose and /bronchopt/status during a run (for the demo's scores)."""

    def __init__(self, node):
        from bronchopt_msgs.msg import TrackingStatus
        from geometry_msgs.msg import PoseStamped

        from diagnostic_msgs.msg import DiagnosticArray

        from ..io import ros_convert

        # Imported here, before the bag plays: imported at the first pose (it loads torch, ~250 ms
        # holding the import lock and the GIL) it stalled the player thread of this process, and
        # with the nodes in other processes the images stopped reaching the navigator for 250-340
        # ms half a second into every bag.
        self._rc = ros_convert
        self.poses: dict[int, object] = {}
        self.status = None
        self.index_state = ""
        self.image_publishers = 0  # image publishers the navigator sees (its /diagnostics): the player waits for one
        self.progress: list[tuple[float, int]] = []  # (time, frames processed) when the count grew
        self.latency_ms: list[float] = []  # receive-to-pose latency of each processed frame
        self.frame_states: list[tuple[float, int, float]] = []  # (image stamp s, state, confidence) per processed frame
        self.lock = threading.Lock()
        node.create_subscription(PoseStamped, "/bronchopt/pose", self._on_pose, 100)
        node.create_subscription(TrackingStatus, "/bronchopt/status", self._on_status, 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_pose(self, msg) -> None:
        rc = self._rc
        with self.lock:
            self.poses[rc.stamp_to_ns(msg.header.stamp)] = rc.pose_from_msg(msg)

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            for kv in st.values:
                if kv.key == "relocalisation_index":
                    self.index_state = kv.value
                elif kv.key == "image_publishers" and kv.value.isdigit():
                    self.image_publishers = int(kv.value)

    def _on_status(self, msg) -> None:
        with self.lock:
            self.status = msg
            # (from the first processed frame: the idle status before the bag plays says 0)
            if msg.frames_processed > 0 and (not self.progress or msg.frames_processed > self.progress[-1][1]):
                self.progress.append((time.monotonic(), int(msg.frames_processed)))
                self.latency_ms.append(float(msg.processing_latency_ms))
                self.frame_states.append((msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec, int(msg.state),
                                          float(msg.confidence)))

    def processed_fps(self) -> float:
        """Frames processed per second between the first and the last processed frame."""
        with self.lock:
            if len(self.progress) < 2 or self.progress[-1][0] <= self.progress[0][0]:
                return 0.0
            (t0, n0), (t1, n1) = self.progress[0], self.progress[-1]
            return (n1 - n0) / (t1 - t0)


def _score(case: Path, collector: ResultCollector) -> dict:
    from ..io.tum import read_tum, stamps_to_ns
    from ..metrics import pose_error_stats

    stamps, truth = read_tum(case / "truth.tum")
    ns = stamps_to_ns(stamps)
    est, gt = [], []
    for k, t in enumerate(ns):
        match = [p for s, p in collector.poses.items() if abs(s - int(t)) < 1_000_000]
        if match:
            est.append(match[0])
            gt.append(truth[k])
    out = {"frames_in_bag": len(ns), "poses_published": len(collector.poses)}
    if est:
        out.update(pose_error_stats(est, gt))
    st = collector.status
    if st is not None:
        out.update(frames_processed=st.frames_processed, frames_dropped=st.frames_dropped,
                   frames_rejected=st.frames_rejected, renderer=st.renderer_backend, encoder=st.encoder_backend)
        out["processed_fps"] = collector.processed_fps()
    if collector.latency_ms:
        lat = np.asarray(collector.latency_ms)
        out["latency_ms_p50"], out["latency_ms_p95"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
        out["latency_ms"] = [round(x, 1) for x in lat.tolist()]  # each processed frame's, in order
        # ... and its image stamp (s), state (TrackingStatus constant) and confidence: where a run went wrong
        out["frame_states"] = [[round(t, 4), st, round(c, 3)] for t, st, c in collector.frame_states]
    return out


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ..io.player import BagPlayer
    from ..nodes.spin import BackgroundSpin
    from ._ros import config_dir, localhost_default, ros_args

    localhost_default()
    cfg = config_dir()
    nav_yaml = args.navigator_config or str(cfg / "navigator.yaml")
    air_yaml = args.airway_config or str(cfg / "airway_server.yaml")
    case = Path(args.case) if args.case else None
    if args.demo:
        case = _ensure_demo_case(Path(args.out), args.demo_frames)
    mesh = args.mesh or (str(case / "airway.ply") if case else None)
    bag = args.bag or (str(case / "procedure") if case else None)
    if mesh is None:
        print("navigate: give --mesh (or --case / --demo)", file=sys.stderr)
        return 2
    air_over = [f"mesh_path:={mesh}"] + ([f"mesh_units:={args.mesh_units}"] if args.mesh_units else [])
    nav_over = list(args.param)

    procs: list[subprocess.Popen] = []
    extra_nodes = []
    rclpy.init(args=ros_args([nav_yaml, air_yaml]))
    ex = MultiThreadedExecutor(num_threads=4)
    if args.multi_process:
        exe = Path(sys.executable).parent
        for name, yaml_, over in (("airway_server", air_yaml, air_over), ("navigator", nav_yaml, nav_over)):
            cmd = [str(exe / name), "--ros-args", "--params-file", yaml_]
            for o in over:
                cmd += ["-p", o]
            procs.append(subprocess.Popen(cmd))
    else:
        from ..nodes.airway_server import AirwayServer
        from ..nodes.navigator import Navigator

        def params(over):
            out = []
            for o in over:
                k, v = o.split(":=", 1)
                import yaml

                out.append(Parameter(k, value=yaml.safe_load(v)))
            return out

        server = AirwayServer(parameter_overrides=params(air_over))
        nav = Navigator(parameter_overrides=params(nav_over))
        extra_nodes += [server, nav]
    host = rclpy.create_node("bronchopt_navigate")
    extra_nodes.append(host)
    collector = ResultCollector(host)
    player = None
    if bag:
        # (the navigator must have discovered the player too: frames sent before its reader accepts
        # them are lost, and the latched /initialpose would then start it on a later frame)
        player = BagPlayer(host, bag, rate=args.rate, loop=args.loop, clock=False, start_delay=0.5,
                           wait_for_subscribers=30.0, ready=lambda: collector.image_publishers > 0)
    for n in extra_nodes:
        ex.add_node(n)
    spin = BackgroundSpin.start(ex, name="bronchopt-navigate-spin")
    rc_ = 0

    def exited() -> str | None:
        """A node process that has ended (--multi-process): what to say, else None."""
        for name, p in zip(("airway_server", "navigator"), procs):
            if p.poll() is not None:
                return f"navigate: the {name} process exited (code {p.returncode}); see its log above"
        return None

    try:
        if player is not None:
            # Wait until the navigator has its mesh (encoder loaded), then play.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (collector.status is None or collector.status.state == 4) \
                    and not exited():
                time.sleep(0.1)
            # ... and its relocalisation index: a build beside the tracking slows every frame (once
            # per airway: the node keeps it in relocalisation_cache).
            time.sleep(1.5)  # one diagnostics period
            if collector.index_state == "building":
                print("navigate: waiting for the relocalisation index (built once per airway, ~35 s on 2 cores)")
                while time.monotonic() < deadline + 300 and collector.index_state == "building" and not exited():
                    time.sleep(0.2)
            dead = exited()
            if dead is None:
                host.get_logger().info(f"playing {bag} at {args.rate}x")
                player.start()
            while dead is None and not player.done.wait(0.5):
                dead = exited()  # (the bag would play to nobody)
            if dead is not None:
                print(dead, file=sys.stderr)
                return 1
            # Let the navigator finish the last frame.
            last = -1
            while collector.status is not None and collector.status.frames_processed != last:
                last = collector.status.frames_processed
                time.sleep(1.0)
            if player.stats.error:
                print(f"navigate: {player.stats.error}")
            if case is not None and (case / "truth.tum").exists():
                scores = _score(case, collector)
                _print_scores(scores)
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / "navigate_metrics.json").write_text(json.dumps(scores, indent=2, default=float))
                from ..io.tum import write_tum  # (after the bag: a torch import would stall the player)

                with collector.lock:  # the published trajectory (evo_ape tum truth.tum poses.tum)
                    published = sorted(collector.poses.items())
                write_tum(out / "poses.tum", [ns * 1e-9 for ns, _ in published], [p for _, p in published])
                print(f"navigate: scores written to {out / 'navigate_metrics.json'} (poses: {out / 'poses.tum'})")
        else:
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if player is not None:
            player.stop()
        spin.stop()
        for n in extra_nodes:
            n.destroy_node()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        rclpy.try_shutdown()
    return rc_


def _print_scores(s: dict) -> None:
    print("\n=== bronchopt navigate: synthetic procedure through the ROS graph ===")
    if "trans_err_mm_mean" in s:
        print(f"poses published      {s['poses_published']} of {s['frames_in_bag']} frames")
        print(f"translation error    mean {s['trans_err_mm_mean']:.2f} mm, median {s['trans_err_mm_median']:.2f} mm")
        print(f"rotation error       mean {s['rot_err_deg_mean']:.2f} deg ({s['rot_err_rad_mean']:.3f} rad)")
        print(f"success (5 mm/10deg) {100 * s['success_rate']:.1f} %")
    else:
        print("no poses were published")
    if "frames_processed" in s:
        print(f"frames processed     {s['frames_processed']} (dropped {s['frames_dropped']}, "
              f"rejected {s['frames_rejected']}), {s['processed_fps']:.1f} processed frames/s")
        lost = s["frames_in_bag"] - s["frames_processed"] - s["frames_dropped"] - s["frames_rejected"]
        if lost > 0:
            print(f"note                 {lost} frames never reached the navigator (lost in transport: the image "
                  f"topic is best effort)")
    if "latency_ms_p50" in s:
        print(f"latency (receive->pose) p50 {s['latency_ms_p50']:.1f} ms, p95 {s['latency_ms_p95']:.1f} ms")
    print(f"backends             renderer {s.get('renderer', '?')}, encoder {s.get('encoder', '?')}")
