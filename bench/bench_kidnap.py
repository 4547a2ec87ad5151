"""Loss detection and recovery with the shipped encoder: the "kidnapped tracker" (issue 8).

Each case is tracked twice with the default settings: once untouched (every LOST frame there is
a false alarm) and once with the tracker's pose kicked away at frame ``--at`` (what a wrong
relocalisation or a missed fast motion does). Reported per kick size: in how many cases the
navigator said LOST within 30 frames and after how many frames, the error right after the kick,
the error at the end of the procedure (did it find itself again?), and the frames that were wrong
(beyond 5 mm or 10 deg) while it said TRACKING - the ones a user would have trusted.

    python bench/bench_kidnap.py data/val/case_25* --out bench/results/kidnap.json
    python bench/bench_kidnap.py data/val/case_25* --sequential --out bench/results/kidnap_sequential.json
    python bench/bench_kidnap.py data/val/case_25* --config my_navigator.yaml --out /tmp/kidnap.json
(``--config``: the tracker settings of a navigator YAML; default config/navigator.yaml.)
The default (pipelined) tracker puts a frame's pose out before its registration: a sudden gross
error goes out for one frame before it is noticed; ``--sequential`` registers every frame first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bronchopt_ros.cli.evaluate import pipeline_from_yaml
from bronchopt_ros.evaluation import track_case
from bronchopt_ros.metrics import is_success
from bronchopt_ros.pipeline import PipelineConfig, load_default_encoder
from bronchopt_ros.threads import limit_threads
from bronchopt_ros.tracker import TrackState

KICKS = {  # right increments (m, rad): camera-frame translation then rotation
    "gross (8 mm, 0.33 rad)": [0.006, -0.004, 0.005, 0.1, -0.1, 0.3],
    "mild (3 mm, 0.1 rad)": [0.002, -0.0015, 0.0015, 0.03, -0.03, 0.09],
}
LOST = (TrackState.LOST, TrackState.RELOCALISING)


def run(case, encoder, kick=None, at: int = 150, pipelined: bool = True, cfg: PipelineConfig | None = None):
    cfg = cfg or PipelineConfig()
    cfg = replace(cfg, tracker=replace(cfg.tracker, pipelined=pipelined))
    n = [0]
    relocalised = []

    def hook(tracker, frame, res):
        n[0] += 1
        relocalised.append(res.relocalised)
        if kick is not None and n[0] == at:
            tracker.pose = tracker.pose.retract(kick)

    recs, _, _ = track_case(case, cfg, encoder=encoder, progress=False, on_result=hook)
    # Noticed: reported LOST, or replaced by a search's result (pipelined, a frame's failure is
    # found when its registration finishes, beside the next frame, which may then relocalise at
    # once and go out TRACKING: LOST in no result, but counted in the status' relocalisations).
    lost = np.array([r.state in LOST or re for r, re in zip(recs, relocalised)])
    err = np.array([r.pose.translation_error(r.truth) * 1e3 for r in recs])
    wrong = np.array([r.state == TrackState.TRACKING and not is_success(r.pose, r.truth) for r in recs])
    return lost, err, wrong


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--at", type=int, default=150, help="frame of the kick")
    ap.add_argument("--sequential", action="store_true",
                    help="tracker.pipelined off: each frame registered before its pose goes out")
    ap.add_argument("--config", default=None, help="navigator YAML (default config/navigator.yaml)")
    args = ap.parse_args(argv)
    limit_threads()
    cfg = pipeline_from_yaml(args.config)
    encoder = load_default_encoder(cfg)
    t0 = time.perf_counter()
    res = {"cases": [Path(c).name for c in args.cases], "at": args.at, "pipelined": not args.sequential,
           "clean": {}, "kicks": {}}
    for case in args.cases:
        lost, err, wrong = run(case, encoder, pipelined=not args.sequential, cfg=cfg)
        res["clean"][Path(case).name] = {"lost_frames": int(lost.sum()), "frames": len(lost), "mean_mm": float(err.mean()),
                                         "wrong_while_tracking": int(wrong.sum())}
    for name, kick in KICKS.items():
        rows = {}
        for case in args.cases:
            lost, err, wrong = run(case, encoder, np.array(kick), args.at, pipelined=not args.sequential, cfg=cfg)
            after = lost[args.at: args.at + 30]
            rows[Path(case).name] = {"detected_after_frames": int(np.argmax(after)) + 1 if after.any() else None,
                                     "error_after_kick_mm": float(err[args.at]), "final_error_mm": float(err[-1]),
                                     "lost_frames_after": int(lost[args.at:].sum()),
                                     "wrong_while_tracking_after": int(wrong[args.at:].sum()),
                                     "frames_after": int(len(wrong) - args.at)}
        res["kicks"][name] = rows
    res["seconds"] = time.perf_counter() - t0
    false = sum(v["lost_frames"] for v in res["clean"].values())
    total = sum(v["frames"] for v in res["clean"].values())
    wrong = sum(v["wrong_while_tracking"] for v in res["clean"].values())
    print(f"untouched runs: {false} of {total} frames reported LOST or relocalised (false alarms), {wrong} wrong "
          f"while TRACKING")
    print("| kick | detected (LOST or relocalised within 30 frames) | frames to it | error after kick mm | final error mm | "
          "frames wrong while TRACKING after the kick |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in res["kicks"].items():
        det = [r["detected_after_frames"] for r in rows.values() if r["detected_after_frames"] is not None]
        print(f"| {name} | {len(det)} / {len(rows)} | {np.median(det) if det else '-'} (median) | "
              f"{np.mean([r['error_after_kick_mm'] for r in rows.values()]):.1f} | "
              f"{np.mean([r['final_error_mm'] for r in rows.values()]):.1f} | "
              f"{sum(r['wrong_while_tracking_after'] for r in rows.values())} of "
              f"{sum(r['frames_after'] for r in rows.values())} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"{res['seconds']:.0f} s; written {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
