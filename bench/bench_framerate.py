"""Tracking against the camera's frame rate: the same procedures filmed at 60, 30 and 15 frames/s.

Each anatomy's procedure is simulated once at 60 frames/s (``--seconds`` long); the 30 and 15
frames/s versions keep every 2nd and 4th frame of its bag, so the rows of one anatomy see the same
images, poses and breathing and differ only in the rate. Every frame is registered (as ``bronchopt
eval`` without ``--realtime``), with the navigator config's settings (``--config``).

    python bench/bench_framerate.py --seeds 3201 3202 3203 3204 --out bench/results/framerate.json

Test seeds (>= 3000) are held-out anatomies in the test appearance; choose settings on validation
seeds (2000-2999), report on test seeds. Cases are written to ``--work`` (default
data/framerate, ~65 s per 15 s case at 60 frames/s) and reused; each tracking result is kept
there under a hash of the config and the package's code, so an interrupted run resumes and a
changed tracker runs again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _tables import markdown_table, write_results  # (bench/: the script's own folder)
from _tracking import pooled, settings_hash, track

RATES = (60, 30, 15)  # frames/s; 60 divided by each must be an integer


def make_case(work: Path, seed: int, seconds: float) -> Path:
    """The anatomy's procedure at 60 frames/s (written once)."""
    from bronchopt_ros.sim.case import CaseParams, write_case

    out = work / f"case_{seed}_60fps"
    if not (out / "case.json").exists():
        write_case(out, seed, CaseParams(n_frames=int(round(seconds * 60)), fps=60.0, starts=False))
    return out


def subsample_case(src: Path, dst: Path, every: int) -> Path:
    """``src`` with only every ``every``-th frame (and its camera_info) in its bag: the same
    procedure at 1 / ``every`` of the rate. Mesh, centerline and truth are copied as they are."""
    from bronchopt_ros.io.bag import BagWriter, read_case_bag

    if (dst / "case.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, tmp / f.name)
    n, kept, camera = 0, 0, None
    with BagWriter(tmp / "procedure") as bag:
        for ev in read_case_bag(src / "procedure"):
            if ev.kind == "initialpose":
                bag.write_initialpose(ev.stamp_ns, ev.data, ev.covariance)
            elif ev.kind == "camera_info":
                camera = ev.data
            elif ev.kind == "image":
                if n % every == 0:
                    bag.write_camera_info(ev.stamp_ns, camera)
                    bag.write_image(ev.stamp_ns, ev.data)
                    kept += 1
                n += 1
    info = json.loads((tmp / "case.json").read_text())
    info["fps"] = info["fps"] / every
    info["frames"] = kept
    info["subsampled"] = {"from": src.name, "every": every}
    (tmp / "case.json").write_text(json.dumps(info, indent=1))
    tmp.rename(dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    from bronchopt_ros.cli.evaluate import pipeline_from_yaml
    from bronchopt_ros.pipeline import load_default_encoder
    from bronchopt_ros.threads import limit_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="anatomy seeds (test: >= 3000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="procedure length [15]")
    ap.add_argument("--rates", type=int, nargs="+", default=list(RATES), help="frames/s (divisors of 60)")
    ap.add_argument("--config", default="config/navigator.yaml", help="navigator YAML (tracker settings)")
    ap.add_argument("--work", default="data/framerate", help="cases and kept results")
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args(argv)
    if any(60 % r for r in args.rates):
        ap.error("--rates must divide 60")
    limit_threads()
    work = Path(args.work)
    cfg_text = Path(args.config).read_text()
    results = work / "results" / settings_hash(cfg_text)
    results.mkdir(parents=True, exist_ok=True)
    (results / "config.yaml").write_text(cfg_text)
    cfg = pipeline_from_yaml(args.config)
    encoder = load_default_encoder(cfg)
    t0 = time.time()
    rows: dict[int, list[dict]] = {r: [] for r in args.rates}
    for seed in args.seeds:
        full = make_case(work, seed, args.seconds)
        for rate in args.rates:
            case = full if rate == 60 else subsample_case(full, work / f"case_{seed}_{rate}fps", 60 // rate)
            m = track(case, cfg, encoder, results)
            rows[rate].append({"seed": seed, **m})
            print(f"{seed} {rate:2d} frames/s: {m['frames']} frames, {m['trans_err_mm_mean']:.2f} mm "
                  f"{m['rot_err_rad_mean']:.3f} rad {100 * m['success_rate']:.1f} %, LOST {m['lost_frames']}, "
                  f"wrong while TRACKING {m['wrong_while_tracking']}", flush=True)
    table = {rate: pooled(r) for rate, r in rows.items()}
    print()
    print(markdown_table(
        ["camera frames/s", "anatomies", "frames", "mm", "rad", "success", "LOST frames", "wrong while TRACKING",
         "anatomies under 95 %"],
        [[rate, p["cases"], p["frames"], f"{p['trans_err_mm_mean']:.2f}", f"{p['rot_err_rad_mean']:.3f}",
          f"{100 * p['success_rate']:.1f} %", p["lost_frames"], p["wrong_while_tracking"], p["failed_cases"]]
         for rate, p in table.items()]))
    print(f"\n({time.time() - t0:.0f} s)")
    write_results(args.out, {"config": args.config, "seconds": args.seconds, "pooled": table, "by_case": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
