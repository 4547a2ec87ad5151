"""``bronchopt sim``: synthetic airways, recorded procedures and the benchmark.

Examples::

    bronchopt sim case --seed 3000 --out cases/case_3000              # one case (CONTRACT.md layout)
    bronchopt sim case --seed 3001 --out c --frames 120 --size 128 --ct  # also write ct.nii.gz
    bronchopt sim case --seed 3900 --out c --airway seg.nii.gz       # a procedure through your own airway
    bronchopt sim preview cases/case_3000                             # contact sheet PNG
    bronchopt sim benchmark --out bench_data                          # the fixed benchmark (resumable)
    bronchopt sim anatomy --seed 1000 --out a/                        # mesh, centerline and CT only

Seeds pick the split: train 1000-1999, validation 2000-2999, test >= 3000 (test cases are rendered
in the test appearance domain).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="sim_command", metavar="WHAT")

    c = s.add_parser("case", help="write one case folder (mesh, rosbag2, truth.tum, starts/, case.json)",
                     description="Write one benchmark case folder exactly as CONTRACT.md says.")
    c.add_argument("--seed", type=int, required=True, help="anatomy and procedure seed (picks the split)")
    c.add_argument("--out", required=True, help="case folder (created)")
    c.add_argument("--frames", type=int, default=300, help="frames in the procedure [%(default)s]")
    c.add_argument("--size", type=int, default=200, help="image width = height, px [%(default)s]")
    c.add_argument("--fps", type=float, default=30.0, help="frame rate [%(default)s]")
    c.add_argument("--breathing", type=float, default=0.03, help="breathing amplitude (0 = none) [%(default)s]")
    c.add_argument("--divergence-mm", type=float, default=1.0, help="static CT-to-body warp amplitude [%(default)s]")
    c.add_argument("--generations", type=int, default=6, help="airway generations below the trachea [%(default)s]")
    c.add_argument("--anatomy", default="", metavar="OVERRIDES",
                   help="AnatomyParams overrides of the generated airway, 'FIELD=VALUE[,FIELD=VALUE]' (e.g. "
                        "trachea_diameter_mm=14,generations=8,min_diameter_mm=1.8 for a small patient's narrow, "
                        "deep tree; lumen_ellipticity=0.12,lumen_lobes=0.15 for elliptic / folded lumens); "
                        "recorded in case.json")
    c.add_argument("--airway", default=None, metavar="PATH",
                   help="fly through this airway instead of generating one: a mesh (STL/PLY/OBJ, --airway-units) "
                        "or a CT / airway label map (NIfTI); its centerline is computed unless a sidecar "
                        "PATH.centerline.json exists. The seed still picks the procedure and the appearance")
    c.add_argument("--airway-units", default="mm", choices=["mm", "m"], help="units of an --airway mesh [%(default)s]")
    c.add_argument("--label", type=int, default=None, help="label of the airway in an --airway label map [any non-zero]")
    c.add_argument("--scope-diameter", type=float, default=0.0, metavar="MM",
                   help="the scope's outer diameter: its tip keeps its radius from the wall, it enters only "
                        "bronchi it fits in, and its light guide lies within it (0: a point camera, as the "
                        "benchmark's) [%(default)s]")
    c.add_argument("--fov-deg", type=float, default=None,
                   help="horizontal field of view of a centred camera [the paper's camera, 84.5 deg]")
    c.add_argument("--no-starts", action="store_true", help="no starts/ for the frame-wise protocol")
    c.add_argument("--start-every", type=int, default=5, help="starts for every k-th frame [%(default)s]")
    c.add_argument("--compressed", choices=["jpeg", "png"], default=None, help="also write image_raw/compressed")
    c.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    c.add_argument("--ct", action="store_true", help="also write the synthetic CT as ct.nii.gz")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=run_case)

    v = s.add_parser("preview", help="write a contact sheet PNG of a case's frames",
                     description="Write a contact sheet of evenly spaced frames (default CASE/preview.png).")
    v.add_argument("case", help="case folder or bag folder")
    v.add_argument("--out", default=None, help="PNG path [CASE/preview.png]")
    v.add_argument("-n", type=int, default=16, help="frames [%(default)s]")
    v.add_argument("--cols", type=int, default=4)
    v.set_defaults(func=run_preview)

    b = s.add_parser("benchmark", help="write the fixed benchmark (frame-wise + tracking sets, test split)",
                     description="Write the fixed benchmark on test anatomies; existing cases are kept.")
    from ..sim.benchmark import BenchmarkParams

    d = BenchmarkParams()
    b.add_argument("--out", required=True, help="benchmark folder")
    b.add_argument("--framewise-cases", type=int, default=d.framewise_cases, help="[%(default)s]")
    b.add_argument("--framewise-frames", type=int, default=d.framewise_frames, help="[%(default)s]")
    b.add_argument("--start-every", type=int, default=d.start_every, help="[%(default)s]")
    b.add_argument("--tracking-cases", type=int, default=d.tracking_cases, help="[%(default)s]")
    b.add_argument("--tracking-frames", type=int, default=d.tracking_frames, help="[%(default)s]")
    b.add_argument("--size", type=int, default=d.size, help="[%(default)s]")
    b.add_argument("--breathing", type=float, default=d.breathing_amplitude, help="[%(default)s]")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=run_benchmark)

    a = s.add_parser("anatomy", help="write an anatomy only: airway.ply (+ centerline) and ct.nii.gz",
                     description="Generate one airway tree, its synthetic CT and the mesh extracted from it.")
    a.add_argument("--seed", type=int, required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--generations", type=int, default=6)
    a.add_argument("--no-ct", action="store_true", help="skip writing the CT volume")
    a.set_defaults(func=run_anatomy)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def run_case(args: argparse.Namespace) -> int:
    from ..sim.anatomy import AnatomyParams, parse_overrides
    from ..sim.breathing import BreathingParams
    from ..sim.case import CaseParams, write_case
    from ..sim.trajectory import TrajectoryParams

    breathing = None
    if args.breathing > 0 or args.divergence_mm > 0:
        breathing = BreathingParams(amplitude=args.breathing, divergence=args.divergence_mm * 1e-3)
    if not 0.0 <= args.scope_diameter < 20.0:
        print(f"sim case: --scope-diameter {args.scope_diameter} mm is not a bronchoscope's")
        return 2
    cp = CaseParams(n_frames=args.frames, size=args.size, fov_deg=args.fov_deg, fps=args.fps, breathing=breathing,
                    trajectory=TrajectoryParams(scope_diameter=args.scope_diameter * 1e-3),
                    starts=not args.no_starts, start_every=args.start_every, compressed=args.compressed,
                    storage=args.storage, write_ct=args.ct)
    anatomy = None
    if args.airway:
        from ..airway.loading import load_airway_with_centerline

        if args.anatomy:
            print("sim case: --anatomy shapes a generated airway; it cannot change a given --airway")
            return 2
        try:
            anatomy = load_airway_with_centerline(args.airway, units=args.airway_units, label=args.label)
        except (FileNotFoundError, ValueError) as exc:
            print(f"sim case: {exc}")
            return 2
    try:
        overrides = {"generations": args.generations, **parse_overrides(args.anatomy)}
    except ValueError as exc:
        print(f"sim case: {exc}")
        return 2
    res = write_case(args.out, args.seed, cp, anatomy=anatomy,
                     anatomy_params=AnatomyParams(**overrides), progress=not args.quiet,
                     anatomy_source=args.airway)
    t = res.timing
    print(f"case {args.seed} ({res.info['split']}, {res.frames} frames at {args.size}px) -> {args.out}: "
          f"{t['total_s']:.1f} s ({t['anatomy_s']:.1f} s anatomy, {t.get('render_s', 0):.1f} s images)")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from ..sim.preview import contact_sheet

    try:
        out = contact_sheet(args.case, args.out, n=args.n, cols=args.cols)
    except (FileNotFoundError, ValueError) as exc:
        print(f"preview: {exc}")
        return 2
    print(out)
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    from ..sim.benchmark import BenchmarkParams, write_benchmark

    p = BenchmarkParams(framewise_cases=args.framewise_cases, framewise_frames=args.framewise_frames,
                        start_every=args.start_every, tracking_cases=args.tracking_cases,
                        tracking_frames=args.tracking_frames, size=args.size, breathing_amplitude=args.breathing)
    t0 = time.perf_counter()
    m = write_benchmark(args.out, p, progress=not args.quiet)
    for c in m["cases"]:
        print(f"{c['set']:9s} {c['path']:28s} {c['frames']:4d} frames  {c['status']:7s} {c['seconds']:6.1f} s")
    print(f"benchmark -> {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def run_anatomy(args: argparse.Namespace) -> int:
    from ..airway.loading import save_centerline, sidecar_path
    from ..sim.anatomy import AnatomyParams, generate_anatomy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    an = generate_anatomy(args.seed, AnatomyParams(generations=args.generations), progress=True)
    an.airway.to_trimesh("mm").export(out / "airway.ply")
    save_centerline(an.airway.centerline, sidecar_path(out / "airway.ply"))
    if not args.no_ct and getattr(an, "ct", None) is not None:
        an.ct.save(out / "ct.nii.gz")
    info = {"seed": args.seed, "faces": int(len(an.airway.faces)), "branches": len(an.airway.centerline),
            "timings": getattr(an, "timings", {})}
    (out / "anatomy.json").write_text(json.dumps(info, indent=1, default=float))
    print(json.dumps(info, default=float))
    return 0
