"""Tracking through a given airway: a real patient's segmentation instead of the generated ones.

Every other bench flies through anatomies from the project's own generator. Here the procedures
are simulated (as ``bronchopt sim case --airway``) through the airway you give, a mesh or a CT /
airway label map, each to a target in another lobe, and tracked over every frame with the
navigator config's settings. Seeds pick the procedure and the appearance (>= 3000: the test
appearance domain, never used in training).

    python bench/bench_anatomy.py --airway ../shared/data/airway_lidc487_label.nii.gz \\
        --out bench/results/anatomy_lidc487.json

(The LIDC487 label map is the real segmentation in ../shared/data: 0.46 x 0.46 x 0.70 mm voxels,
staircase surfaces, a cut trachea; CC BY-NC-SA, so it is not in this repository, and neither are
the cases made from it.) Cases are written to ``--work`` (default data/anatomy_<file name>, ~45 s
per 15 s procedure here) and reused; each tracking result is kept there under a hash of the config
and the package's code, so an interrupted run resumes and a changed tracker runs again.

``--scope-diameter MM`` films the procedures with a scope of that size (``sim case
--scope-diameter``): only where it fits, its light guide inside its tip. The default, a point
camera, also goes where no bronchoscope can (bench/results/anatomy_lidc487_scope2.8.json against
anatomy_lidc487.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _tables import markdown_table, write_results  # (bench/: the script's own folder)
from _tracking import pooled, settings_hash, track

GROUPS = ("trachea", "generations 1-2", "generations 3-4", "generations 5+")


def make_cases(airway_path: Path, seeds: list[int], seconds: float, work: Path, scope_mm: float = 0.0) -> list[Path]:
    """One procedure per seed through the airway, each to its own target spread over the lobes
    (:func:`~bronchopt_ros.sim.trajectory.spread_targets`; written once, the airway loaded only
    if a case is missing), by a scope of ``scope_mm`` (0: a point camera)."""
    from bronchopt_ros.airway.loading import load_airway_with_centerline
    from bronchopt_ros.sim.case import CaseParams, write_case
    from bronchopt_ros.sim.trajectory import TrajectoryParams, spread_targets

    tp = TrajectoryParams(scope_diameter=scope_mm * 1e-3)
    airway, targets, cases = None, [], []
    for k, seed in enumerate(seeds):
        out = work / f"case_{seed}"
        if (out / "case.json").exists():
            made = json.loads((out / "case.json").read_text())["trajectory"]["params"].get("scope_diameter", 0.0)
            if abs(made - tp.scope_diameter) > 1e-9:
                raise ValueError(f"{out} was made with a {1e3 * made:g} mm scope, not {scope_mm:g}: use another --work")
        else:
            if airway is None:
                t = time.time()
                airway = load_airway_with_centerline(airway_path)
                targets = spread_targets(airway.centerline, len(seeds), seconds, tp)
                print(f"{airway_path.name}: {len(airway.faces)} faces, {len(airway.centerline)} centerline "
                      f"branches ({time.time() - t:.0f} s); targets {targets}", flush=True)
            write_case(out, seed, CaseParams(n_frames=int(round(seconds * 30)), starts=False, target_leaf=targets[k],
                                             trajectory=tp),
                       anatomy=airway, anatomy_source=airway_path)
        cases.append(out)
    return cases


def by_generation(rows: list[dict]) -> dict[str, dict]:
    """Frame-weighted means per airway region over the cases."""
    out = {}
    for g in GROUPS:
        parts = [r["by_generation"][g] for r in rows if g in r.get("by_generation", {})]
        n = sum(p["frames"] for p in parts)
        if n:
            out[g] = {"frames": n, **{k: sum(p[k] * p["frames"] for p in parts) / n
                                      for k in ("trans_err_mm_mean", "rot_err_rad_mean", "success_rate")}}
    return out


def main(argv: list[str] | None = None) -> int:
    from bronchopt_ros.cli.evaluate import pipeline_from_yaml
    from bronchopt_ros.pipeline import load_default_encoder
    from bronchopt_ros.threads import limit_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--airway", required=True, help="mesh (mm) or NIfTI CT / airway label map")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3900, 3901, 3902, 3903, 3904, 3905, 3906, 3907],
                    help="procedure and appearance seeds [%(default)s]")
    ap.add_argument("--seconds", type=float, default=15.0, help="procedure length at 30 frames/s [15]")
    ap.add_argument("--config", default="config/navigator.yaml", help="navigator YAML (tracker settings)")
    ap.add_argument("--scope-diameter", type=float, default=0.0, metavar="MM",
                    help="the scope's outer diameter (sim case --scope-diameter; 0: a point camera) [0]")
    ap.add_argument("--work", default=None,
                    help="cases and kept results [data/anatomy_<file name>, _scope<MM> with a scope]")
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args(argv)
    airway_path = Path(args.airway)
    if not airway_path.exists():
        print(f"bench_anatomy: no airway at {airway_path}")
        return 2
    limit_threads()
    stem = airway_path.name.split(".")[0]
    work = Path(args.work or f"data/anatomy_{stem}" + (f"_scope{args.scope_diameter:g}" if args.scope_diameter else ""))
    cfg_text = Path(args.config).read_text()
    results = work / "results" / settings_hash(cfg_text)
    results.mkdir(parents=True, exist_ok=True)
    (results / "config.yaml").write_text(cfg_text)
    t0 = time.time()
    try:
        cases = make_cases(airway_path, args.seeds, args.seconds, work, args.scope_diameter)
    except ValueError as exc:
        print(f"bench_anatomy: {exc}")
        return 2
    cfg = pipeline_from_yaml(args.config)
    encoder = load_default_encoder(cfg)
    rows = []
    for seed, case in zip(args.seeds, cases):
        m = track(case, cfg, encoder, results, generations=True)
        rows.append({"seed": seed, **m})
        print(f"{seed}: {m['frames']} frames, {m['trans_err_mm_mean']:.2f} mm {m['rot_err_rad_mean']:.3f} rad "
              f"{100 * m['success_rate']:.1f} %, LOST {m['lost_frames']}, wrong while TRACKING "
              f"{m['wrong_while_tracking']}", flush=True)
    all_, regions = pooled(rows), by_generation(rows)
    print()
    print(markdown_table(
        ["procedure", "frames", "mm", "rad", "success", "LOST frames", "wrong while TRACKING"],
        [[r["seed"], r["frames"], f"{r['trans_err_mm_mean']:.2f}", f"{r['rot_err_rad_mean']:.3f}",
          f"{100 * r['success_rate']:.1f} %", r["lost_frames"], r["wrong_while_tracking"]] for r in rows]
        + [["all", all_["frames"], f"{all_['trans_err_mm_mean']:.2f}", f"{all_['rot_err_rad_mean']:.3f}",
            f"{100 * all_['success_rate']:.1f} %", all_["lost_frames"], all_["wrong_while_tracking"]]]))
    print()
    print(markdown_table(["region", "frames", "mm", "rad", "success"],
                         [[g, r["frames"], f"{r['trans_err_mm_mean']:.2f}", f"{r['rot_err_rad_mean']:.3f}",
                           f"{100 * r['success_rate']:.1f} %"] for g, r in regions.items()]))
    print(f"\n({time.time() - t0:.0f} s)")
    write_results(args.out, {"airway": airway_path.name, "config": args.config, "seconds": args.seconds,
                             "scope_diameter_mm": args.scope_diameter,
                             "pooled": all_, "by_generation": regions, "by_case": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
