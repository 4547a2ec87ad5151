"""Compare encoder weights on the same cases (choose a retrained encoder by validation, not the test split).

    python bench/compare_weights.py --weights shipped runs/enc3/encoder.pt \
        --cases data/deep/case_* data/val/case_* --out /tmp/cmp [--framewise medium] [--config config/navigator.yaml]

For each weights file (``shipped`` = the package's) every case is run with ``bronchopt eval``
(offline, every frame; the navigator config's ``encoder_weights`` replaced), then the
frame-weighted means over all cases and per airway generation are printed and written to
OUT/compare.json. Runs already in OUT are reused (delete them to re-run). Make validation cases
with ``bronchopt sim case --seed 25xx --frames 900 --no-starts`` (``--start-every 36`` for
frame-wise ones).
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path


def _config(src: Path, weights: str, out: Path) -> Path:
    text = src.read_text()
    if weights != "shipped":
        key = 'encoder_weights: ""'
        if key not in text:
            raise SystemExit(f"{src} has no empty encoder_weights entry to replace")
        text = text.replace(key, f'encoder_weights: "{Path(weights).resolve()}"')
    out.write_text(text)
    return out


def _aggregate(runs: list[dict]) -> dict:
    n = sum(m["frames"] for m in runs)
    mean = lambda rows, k: sum(r[k] * r["frames"] for r in rows) / max(1, sum(r["frames"] for r in rows))  # noqa: E731
    out = {"frames": n, **{k: mean(runs, k) for k in ("trans_err_mm_mean", "rot_err_rad_mean", "success_rate")},
           "wrong_while_tracking": sum(m.get("wrong_while_tracking") or 0 for m in runs), "by_generation": {}}
    gens: dict[str, list] = {}
    for m in runs:
        for g, v in m.get("by_generation", {}).items():
            gens.setdefault(g, []).append(v)
    for g, rows in gens.items():
        out["by_generation"][g] = {"frames": sum(r["frames"] for r in rows),
                                   **{k: mean(rows, k) for k in ("trans_err_mm_mean", "rot_err_rad_mean", "success_rate")}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True, help="weights files, or 'shipped'")
    ap.add_argument("--cases", nargs="+", required=True, help="case folders (validation anatomies)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--framewise", choices=["easy", "medium", "hard"], default=None)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "config" / "navigator.yaml"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for k, w in enumerate(args.weights):
        cfg = _config(Path(args.config), w, out / f"navigator_{k}.yaml")
        runs = []
        for case in args.cases:
            run = out / f"w{k}" / (Path(case).name + (f"_{args.framewise}" if args.framewise else ""))
            if not (run / "metrics.json").exists():
                cmd = ["bronchopt", "eval", case, "--out", str(run), "--config", str(cfg), "--no-plots", "--quiet"]
                subprocess.run(cmd + (["--framewise", args.framewise] if args.framewise else []), check=True,
                               stdout=subprocess.DEVNULL)
            m = json.loads((run / "metrics.json").read_text())
            runs.append(m)
            print(f"{w} {Path(case).name}: {m['trans_err_mm_mean']:.2f} mm {m['rot_err_rad_mean']:.3f} rad "
                  f"{100 * m['success_rate']:.1f} % wrong while tracking {m.get('wrong_while_tracking')}", flush=True)
        result[w] = _aggregate(runs)
    print("\n| weights | frames | mm | rad | success | wrong while tracking |\n| --- | --- | --- | --- | --- | --- |")
    for w, a in result.items():
        print(f"| {w} | {a['frames']} | {a['trans_err_mm_mean']:.2f} | {a['rot_err_rad_mean']:.3f} | "
              f"{100 * a['success_rate']:.1f} % | {a['wrong_while_tracking']} |")
        for g, v in a["by_generation"].items():
            print(f"|   {g} | {v['frames']} | {v['trans_err_mm_mean']:.2f} | {v['rot_err_rad_mean']:.3f} | "
                  f"{100 * v['success_rate']:.1f} % | |")
    (out / "compare.json").write_text(json.dumps({"cases": args.cases, "framewise": args.framewise,
                                                  "results": result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
