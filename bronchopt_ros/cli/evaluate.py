"""``bronchopt eval CASE --out DIR``: run the tracker over a case's bag offline (every frame, as
fast as it goes) from the bag's /initialpose and write poses.tum, metrics.json and plots.

``--realtime [SECONDS]`` replays the bag as the node sees a live camera: frames that arrive while
the tracker is busy wait in a one-frame slot (the newest wins), so a tracker slower than the
camera skips frames - busy for its measured time per frame, or SECONDS per frame. With SECONDS
the run is reproducible: time is the replay's, and a frame's registration, finishing beside the
next frames (pipelined, as in the node), lands ``--registration-s`` after its frame started
(default SECONDS; longer models busy cores, where frames go out on the odometry alone until it
lands). A frame that would miss ``tracker.latency_budget_s`` is let go when the next is due
sooner, as in the node. Only the processed frames are scored; ``skipped_frames`` counts the
others, ``unregistered_frames`` those that went out on the odometry alone; the latency is
receive-to-pose (the wait in the slot included).

``--framewise LEVEL`` (easy, medium, hard) runs the paper's protocol instead: each frame listed in
starts/LEVEL.tum registered independently from its stored start; metrics over all frames and over
the successful ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", help="case folder (airway.ply, procedure/, truth.tum[, starts/])")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--framewise", choices=["easy", "medium", "hard"], help="the paper's frame-wise protocol")
    p.add_argument("--mode", choices=["depth", "features_gn", "features"], default=None,
                   help="registration objective (default from config/navigator.yaml: depth)")
    p.add_argument("--config", help="navigator YAML to take the tracker settings from (default config/navigator.yaml)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--realtime", nargs="?", type=float, const=0.0, default=None, metavar="SECONDS",
                   help="skip the frames a live camera would deliver while the tracker is busy (its measured "
                        "time, or SECONDS per frame)")
    p.add_argument("--registration-s", type=float, default=None, metavar="SECONDS",
                   help="with --realtime SECONDS: replay seconds a frame's background registration takes "
                        "(default: SECONDS)")
    p.add_argument("--follow-s", type=float, default=None, metavar="SECONDS",
                   help="with --realtime SECONDS: replay seconds a followed skipped frame costs (default: a third "
                        "of SECONDS)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def pipeline_from_yaml(path: str | Path | None, mode: str | None = None):
    """PipelineConfig from the navigator's YAML (the same settings the node uses)."""
    import yaml

    from ..lighting import LightingConfig
    from ..odometry import OdometryConfig
    from ..pipeline import PipelineConfig
    from ..tracker import TrackerConfig
    from ._ros import config_dir

    path = Path(path) if path else config_dir() / "navigator.yaml"
    params = yaml.safe_load(path.read_text())["navigator"]["ros__parameters"]
    tr = dict(params.get("tracker", {}))
    if mode:
        tr["mode"] = mode

    def fields(d: dict) -> dict:  # (YAML lists are the dataclasses' tuples)
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    tcfg = TrackerConfig(**fields(tr))
    ocfg = OdometryConfig(**fields(params.get("odometry", {})))
    lcfg = LightingConfig(**fields(params.get("lighting", {})))
    keys = ("renderer_backend", "encoder_backend", "encoder_weights", "encoder_input_size", "principal_point_tolerance", "max_fov_deg",
            "device", "relocalisation", "relocalisation_cache")
    return PipelineConfig(tracker=tcfg, odometry=ocfg, lighting=lcfg, **{k: params[k] for k in keys if k in params})


def run(args: argparse.Namespace) -> int:
    from .. import evaluation as ev

    if (args.registration_s is not None or args.follow_s is not None) and not (args.realtime or 0) > 0:
        print("eval: --registration-s / --follow-s model a fixed --realtime SECONDS; give one", file=sys.stderr)
        return 2
    cfg = pipeline_from_yaml(args.config, args.mode)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.framewise:
        records, starts, errors, tracker = ev.framewise_case(args.case, args.framewise, cfg, progress=not args.quiet,
                                                             max_frames=args.max_frames)
        metrics = ev.framewise_metrics(records, starts, tracker)
    else:
        records, errors, tracker = ev.track_case(args.case, cfg, progress=not args.quiet, keep_frames=1,
                                                 max_frames=args.max_frames, realtime=args.realtime,
                                                 registration_s=args.registration_s, follow_s=args.follow_s)
        metrics = ev.summarise(records)
        # (ambiguous returns refused, blind frames that meant LOST / were held near their start, search
        # results turned too far, drift rechecks and their moves: Tracker.COUNTERS)
        metrics.update(tracker.counters())
        # (frames the bag's video itself lost: gaps in the images' stamps, as /diagnostics counts them)
        metrics["video_gaps"] = int(tracker.video_gaps)
        metrics["video_frames_missing"] = int(tracker.video_frames_missing)
        if args.realtime is not None:
            metrics["realtime_frame_s"] = args.realtime
            metrics["unregistered_frames"] = int(tracker.unregistered)  # (went out on the odometry alone)
            if tracker.clock is not None:
                metrics["replay_registration_s"] = tracker.clock.registration_s
                metrics["replay_follow_s"] = tracker.clock.follow_s
            metrics["skipped_frames"] = int(tracker.skipped_frames)
            metrics["waited_for_newer"] = int(tracker.waited_for_newer)  # (the latency budget)
    metrics["bag_errors"] = errors
    metrics["mode"] = cfg.tracker.mode
    metrics["renderer"] = getattr(tracker, "renderer_backend", "")
    metrics["encoder"] = getattr(tracker, "encoder_backend", "")
    metrics["index_build_s"] = float(getattr(tracker, "index_build_s", 0.0))  # one-time, not in frame times
    ev.write_results(out, records, metrics)
    if not args.no_plots and not args.framewise:
        from ..plots import overlay_strip, plot_errors, plot_trajectory

        plot_trajectory(out / "trajectory.png", ev.load_case_airway(Path(args.case)), records)
        plot_errors(out / "errors.png", records)
        overlay_strip(out / "overlay_strip.png", tracker.renderer, records)
    for e in errors:
        print(f"bag problem: {e}")
    keys = ("frames", "trans_err_mm_mean", "trans_err_mm_median", "rot_err_rad_mean", "rot_err_deg_mean",
            "success_rate", "fps_mean", "latency_ms_p50", "latency_ms_p95", "lost_frames", "wrong_while_tracking",
            "longest_lost_s", "lost_stretches", "recoveries", "recovery_s_mean", "skipped_frames", "waited_for_newer")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=1, default=float))
    print(f"results in {out}/ (poses.tum, metrics.json" + ("" if args.no_plots or args.framewise else ", *.png") + ")")
    return 0
