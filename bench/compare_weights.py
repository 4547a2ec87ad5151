"""Compare encoder weights (or settings) on the same cases (choose by validation, not the test split).

    python bench/compare_weights.py --weights shipped runs/enc3/encoder.pt \
        --cases data/deep/case_* data/val/case_* --out /tmp/cmp [--framewise medium] [--config A.yaml [B.yaml ...]]

With several ``--config`` files every weights file runs with each (labelled ``WEIGHTS @ CONFIG``),
so settings are compared the same way, paired over the same repeats.

Cases from several folders (data/val, data/deep, ...) are also pooled per folder, each group with
its own paired differences: a gain on short procedures must not hide a loss deep in long ones
(sessions 16-30: validation on 10 s procedures kept preferring weights that lost deep on the 30 s
test insertions; judge by the 30 s insertions' generations 5+ too).

For each weights file (``shipped`` = the package's) the cases are tracked offline, every frame
(or registered frame-wise from ``starts/LEVEL.tum``), with the navigator config's settings, as
``bronchopt bench`` does. Prints a line per case, then the frames of all cases pooled into one
row (with its airway generations) per weights file; writes both to OUT/compare.json (``by_case``). Make validation cases
with ``bronchopt sim case --seed 25xx --frames 900 --no-starts`` (``--start-every 36`` for
frame-wise ones).

The tracker amplifies tiny differences: on the ten validation cases any small change of the solver
or the encoder moves the mean rotation by ~0.005 rad and the frames wrong while TRACKING by tens
(docs/performance-notes.md, sessions 21-25). ``--repeats K`` tracks every case K times, the first
from its /initialpose, the others from it moved by a random ``--jitter`` (0.2 mm and 0.005 rad by
default; the same moves for every weights file, so the comparison is paired), and prints each
weights file's pooled figures as mean +- standard deviation over the repeats, and the paired
differences from the first weights file: a difference within a standard deviation is the spread.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

SPREAD_KEYS = ("trans_err_mm_mean", "rot_err_rad_mean", "success_rate", "wrong_while_tracking", "deep_rot_rad")


def jitters(repeats: int, n_cases: int, trans_m: float, rot_rad: float) -> np.ndarray:
    """(repeats, n_cases, 6) moves of each case's /initialpose: none in the first repeat, then a
    random direction of length ``trans_m`` and one of ``rot_rad`` (seeded: the same every run)."""
    rng = np.random.default_rng(20261206)
    xi = np.zeros((repeats, n_cases, 6))
    for r in range(1, repeats):
        for c in range(n_cases):
            v, w = rng.normal(size=3), rng.normal(size=3)
            xi[r, c] = np.r_[trans_m * v / np.linalg.norm(v), rot_rad * w / np.linalg.norm(w)]
    return xi


def spread_figures(m: dict) -> dict:
    """The pooled figures compared over repeats (generations 5+ where the cases reach them)."""
    deep = m.get("by_generation", {}).get("generations 5+", {})
    return {"trans_err_mm_mean": m["trans_err_mm_mean"], "rot_err_rad_mean": m["rot_err_rad_mean"],
            "success_rate": m["success_rate"], "wrong_while_tracking": m.get("wrong_while_tracking", 0),
            "deep_rot_rad": deep.get("rot_err_rad_mean", float("nan"))}


def print_spread(spread: dict[str, list[dict]], first: str, title: str) -> None:
    """Each variant's figures over the repeats (mean +- sd) and its paired difference from ``first``."""
    print(f"\n{title} (mean +- sd; paired difference from {first}):")
    print("| weights | " + " | ".join(SPREAD_KEYS) + " |\n|" + " --- |" * (len(SPREAD_KEYS) + 1))
    base = np.array([[rep[k] for k in SPREAD_KEYS] for rep in spread[first]], float)
    for w in spread:
        a = np.array([[rep[k] for k in SPREAD_KEYS] for rep in spread[w]], float)
        sd = (lambda x: x.std(ddof=1)) if len(a) > 1 else (lambda x: float("nan"))
        print(f"| {w} | " + " | ".join(f"{a[:, i].mean():.4g} +- {sd(a[:, i]):.2g}" for i in range(len(SPREAD_KEYS)))
              + " |")
        if w != first:
            d = a - base
            print(f"| {w} - {first} | " + " | ".join(
                f"{d[:, i].mean():+.4g} +- {sd(d[:, i]):.2g}" for i in range(len(SPREAD_KEYS))) + " |")


def main(argv: list[str] | None = None) -> int:
    from bronchopt_ros import evaluation as ev
    from bronchopt_ros.cli.evaluate import pipeline_from_yaml
    from bronchopt_ros.pipeline import load_default_encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True, help="weights files, or 'shipped'")
    ap.add_argument("--cases", nargs="+", required=True, help="case folders (validation anatomies)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--framewise", choices=["easy", "medium", "hard"], default=None)
    ap.add_argument("--config", nargs="+", default=[None], help="navigator YAML(s) (default config/navigator.yaml)")
    ap.add_argument("--repeats", type=int, default=1, help="track each case this many times (tracking only) [1]")
    ap.add_argument("--jitter", type=float, nargs=2, default=(2e-4, 5e-3), metavar=("M", "RAD"),
                    help="the repeats' moves of the /initialpose [0.0002 m, 0.005 rad]")
    args = ap.parse_args(argv)
    if args.repeats < 1 or (args.repeats > 1 and args.framewise):
        ap.error("--repeats: at least 1, and only for tracking")
    xis = jitters(args.repeats, len(args.cases), *args.jitter)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result, spread = {}, {}
    groups: dict[str, list[int]] = {}  # cases by folder
    for ci, case in enumerate(args.cases):
        groups.setdefault(Path(case).absolute().parent.name, []).append(ci)
    by_group: dict[str, dict[str, list[dict]]] = {g: {} for g in groups} if len(groups) > 1 else {}
    variants = [(w, c, w if len(args.config) == 1 else f"{w} @ {Path(c).stem if c else 'default'}")
                for w in args.weights for c in args.config]
    for wfile, conf, w in variants:
        cfg = dataclasses.replace(pipeline_from_yaml(conf), encoder_weights="" if wfile == "shipped" else wfile)
        encoder = load_default_encoder(cfg)
        spread[w] = []
        for g in by_group:
            by_group[g][w] = []
        for rep in range(args.repeats):
            recs, starts, tracker, by_case, case_recs = [], [], None, {}, []
            for ci, case in enumerate(args.cases):
                if args.framewise:
                    r, s, _, tracker = ev.framewise_case(case, args.framewise, cfg, encoder=encoder, progress=False)
                    starts += s
                    m = ev.framewise_metrics(r, s, tracker)
                else:
                    r, _, _ = ev.track_case(case, cfg, encoder=encoder, progress=False,
                                            init_xi=xis[rep, ci] if rep else None)
                    m = ev.summarise(r)
                recs += r
                case_recs.append(r)
                by_case[Path(case).name] = m
                print(f"{w} {Path(case).name}{f' (repeat {rep})' if args.repeats > 1 else ''}: {len(r)} frames, "
                      f"{m['trans_err_mm_mean']:.2f} mm, {m['rot_err_rad_mean']:.3f} rad, "
                      f"{100 * m['success_rate']:.1f} %", flush=True)
            pooled = ev.framewise_metrics(recs, starts, tracker) if args.framewise else ev.summarise(recs)
            if rep == 0:
                result[w] = pooled
                result[w]["by_case"] = by_case
            if not args.framewise:
                spread[w].append(spread_figures(pooled))
                for g in by_group:
                    group_recs = [f for ci in groups[g] for f in case_recs[ci]]
                    by_group[g][w].append(spread_figures(ev.summarise(group_recs)))
    print("\n| weights | frames | mm | rad | success | wrong while tracking |\n| --- | --- | --- | --- | --- | --- |")
    for w, m in result.items():
        print(f"| {w} | {m['frames']} | {m['trans_err_mm_mean']:.2f} | {m['rot_err_rad_mean']:.3f} | "
              f"{100 * m['success_rate']:.1f} % | {m.get('wrong_while_tracking', '')} |")
        for g, v in m.get("by_generation", {}).items():
            print(f"|   {g} | {v['frames']} | {v['trans_err_mm_mean']:.2f} | {v['rot_err_rad_mean']:.3f} | "
                  f"{100 * v['success_rate']:.1f} % | |")
    first = variants[0][2]
    if args.repeats > 1:
        print_spread(spread, first, f"All cases, over {args.repeats} repeats")
    for g, sp in by_group.items():
        print_spread(sp, first, f"Cases in {g}/ ({len(groups[g])}), over {args.repeats} repeat(s)")
    (out / "compare.json").write_text(json.dumps({"cases": args.cases, "framewise": args.framewise,
                                                  "configs": args.config, "results": result, "repeats": spread,
                                                  "groups": {g: {"cases": [args.cases[i] for i in groups[g]],
                                                                 "repeats": by_group[g]} for g in by_group},
                                                  "jitter": list(args.jitter) if args.repeats > 1 else None},
                                                 indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
