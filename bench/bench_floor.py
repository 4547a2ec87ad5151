"""What a perfect encoder would give the same tracker: the floor the anatomy's motion sets (issue 9).

The benchmark's cases are tracked (every frame) and registered frame-wise with the shipped
encoder's depth and, in its place, the depth the camera truly saw at each frame's true pose
(:mod:`bronchopt_ros.sim.truth_depth`):

* ``ct``: the undeformed CT's depth. This is the solver's own error.
* ``body``: the depth of the anatomy as the camera saw it, breathing and CT-to-body divergence
  included. This is a perfect depth estimator.
* ``breathing`` / ``divergence``: the body with only one of the two motions.

The ground truth is the pose in the undeformed CT. So ``body`` is as well as any rigid 2D-3D
registration can do with exact depth: what is left is the non-rigid motion.

    python bench/bench_floor.py --tracking data/bench/tracking/case_* \\
        --framewise data/bench/framewise/case_* --out bench/results/floor.json

Each run (kind x case x protocol) is kept in ``--work`` (default out/floor) and is not run again,
so an interrupted bench resumes. The folder belongs to one ``--config`` (a different one is
refused); remove it to start over.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from pathlib import Path

import bronchopt_ros.evaluation as ev
from bronchopt_ros.cli.evaluate import pipeline_from_yaml
from bronchopt_ros.pipeline import load_default_encoder
from bronchopt_ros.sim.truth_depth import KINDS, TruthDepth
from bronchopt_ros.threads import limit_threads

ALL_KINDS = ("encoder",) + KINDS


def _one(case: Path, kind: str, level: str | None, cfg, encoder, work: Path) -> list:
    """One run's records, from ``work`` when already there."""
    key = work / f"{kind}__{case.name}__{level or 'tracking'}.pkl"
    if key.exists():
        return pickle.loads(key.read_bytes())
    predictor = None if kind == "encoder" else TruthDepth(case, kind)
    if level is None:
        records, _, _ = ev.track_case(case, cfg, encoder=encoder, predictor=predictor, progress=False)
    else:
        records, _, _, _ = ev.framewise_case(case, level, cfg, encoder=encoder, predictor=predictor, progress=False)
    key.write_bytes(pickle.dumps(records))
    return records


def _claim(work: Path, config: str | None) -> None:
    """Tie ``work`` to the settings its runs were made with: refuse another ``--config``."""
    text = Path(config).read_text() if config else ""
    mine = {"config": str(config or ""), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    stamp = work / "settings.json"
    if stamp.exists():
        theirs = json.loads(stamp.read_text())
        if theirs.get("sha256") != mine["sha256"]:
            sys.exit(f"{work} holds runs made with --config {theirs.get('config') or '(default)'}: "
                     f"give another --work, or remove it")
        return
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(mine))


def _row(records: list) -> dict:
    m = ev.summarise(records)
    row = {k: m.get(k) for k in ("frames", "trans_err_mm_mean", "rot_err_rad_mean", "success_rate",
                                 "wrong_while_tracking", "lost_frames", "longest_lost_s")}
    if "by_generation" in m:
        row["by_generation"] = m["by_generation"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking", nargs="*", default=[], help="cases tracked every frame")
    ap.add_argument("--framewise", nargs="*", default=[], help="cases with starts/{easy,medium,hard}.tum")
    ap.add_argument("--kinds", nargs="+", default=list(ALL_KINDS), choices=ALL_KINDS)
    ap.add_argument("--levels", nargs="+", default=list(ev.LEVELS), choices=ev.LEVELS)
    ap.add_argument("--config", default=None, help="navigator YAML (default config/navigator.yaml)")
    ap.add_argument("--work", default="out/floor", help="each run's records (resumable)")
    ap.add_argument("--out", required=True, help="JSON")
    args = ap.parse_args(argv)
    if not args.tracking and not args.framewise:
        ap.error("give --tracking and/or --framewise cases")
    limit_threads()
    cfg = pipeline_from_yaml(args.config)
    encoder = load_default_encoder(cfg) if "encoder" in args.kinds else None
    work = Path(args.work)
    _claim(work, args.config)
    protocols = [("tracking", None, [Path(c) for c in args.tracking])] if args.tracking else []
    protocols += [(f"frame-wise {lv}", lv, [Path(c) for c in args.framewise]) for lv in args.levels] \
        if args.framewise else []
    res: dict = {"kinds": args.kinds, "tracking_cases": [Path(c).name for c in args.tracking],
                 "framewise_cases": [Path(c).name for c in args.framewise], "rows": {}}
    t_all = time.perf_counter()
    for name, level, cases in protocols:
        for kind in args.kinds:
            t0 = time.perf_counter()
            records = [r for c in cases for r in _one(c, kind, level, cfg, encoder, work)]
            row = _row(records)
            res["rows"].setdefault(name, {})[kind] = row
            print(f"{name:18s} {kind:10s} {row['trans_err_mm_mean']:6.2f} mm {row['rot_err_rad_mean']:.3f} rad "
                  f"{100 * row['success_rate']:5.1f} %  wrong while TRACKING {row['wrong_while_tracking']:4d}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    res["seconds"] = round(time.perf_counter() - t_all, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    return 0


def table(res: dict) -> str:
    """Markdown: one row per protocol, one column per kind (mm / rad / success)."""
    kinds = res["kinds"]
    lines = ["| protocol | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for name, row in res["rows"].items():
        cells = [f"{row[k]['trans_err_mm_mean']:.2f} mm / {row[k]['rot_err_rad_mean']:.3f} rad / "
                 f"{100 * row[k]['success_rate']:.1f} %" if k in row else "" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
