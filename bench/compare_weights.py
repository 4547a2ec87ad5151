"""Compare encoder weights on the same cases (choose a retrained encoder by validation, not the test split).

    python bench/compare_weights.py --weights shipped runs/enc3/encoder.pt \
        --cases data/deep/case_* data/val/case_* --out /tmp/cmp [--framewise medium] [--config config/navigator.yaml]

For each weights file (``shipped`` = the package's) the cases are tracked offline, every frame
(or registered frame-wise from ``starts/LEVEL.tum``), with the navigator config's settings, as
``bronchopt bench`` does. Prints a line per case, then the frames of all cases pooled into one
row (with its airway generations) per weights file; writes both to OUT/compare.json (``by_case``). Make validation cases
with ``bronchopt sim case --seed 25xx --frames 900 --no-starts`` (``--start-every 36`` for
frame-wise ones).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from bronchopt_ros import evaluation as ev
    from bronchopt_ros.cli.evaluate import pipeline_from_yaml
    from bronchopt_ros.pipeline import load_default_encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True, help="weights files, or 'shipped'")
    ap.add_argument("--cases", nargs="+", required=True, help="case folders (validation anatomies)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--framewise", choices=["easy", "medium", "hard"], default=None)
    ap.add_argument("--config", default=None, help="navigator YAML (default config/navigator.yaml)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for w in args.weights:
        cfg = dataclasses.replace(pipeline_from_yaml(args.config), encoder_weights="" if w == "shipped" else w)
        encoder = load_default_encoder(cfg)
        recs, starts, tracker, by_case = [], [], None, {}
        for case in args.cases:
            if args.framewise:
                r, s, _, tracker = ev.framewise_case(case, args.framewise, cfg, encoder=encoder, progress=False)
                starts += s
                m = ev.framewise_metrics(r, s, tracker)
            else:
                r, _, _ = ev.track_case(case, cfg, encoder=encoder, progress=False)
                m = ev.summarise(r)
            recs += r
            by_case[Path(case).name] = m
            print(f"{w} {Path(case).name}: {len(r)} frames, {m['trans_err_mm_mean']:.2f} mm, "
                  f"{m['rot_err_rad_mean']:.3f} rad, {100 * m['success_rate']:.1f} %", flush=True)
        result[w] = ev.framewise_metrics(recs, starts, tracker) if args.framewise else ev.summarise(recs)
        result[w]["by_case"] = by_case
    print("\n| weights | frames | mm | rad | success | wrong while tracking |\n| --- | --- | --- | --- | --- | --- |")
    for w, m in result.items():
        print(f"| {w} | {m['frames']} | {m['trans_err_mm_mean']:.2f} | {m['rot_err_rad_mean']:.3f} | "
              f"{100 * m['success_rate']:.1f} % | {m.get('wrong_while_tracking', '')} |")
        for g, v in m.get("by_generation", {}).items():
            print(f"|   {g} | {v['frames']} | {v['trans_err_mm_mean']:.2f} | {v['rot_err_rad_mean']:.3f} | "
                  f"{100 * v['success_rate']:.1f} % | |")
    (out / "compare.json").write_text(json.dumps({"cases": args.cases, "framewise": args.framewise,
                                                  "results": result}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
