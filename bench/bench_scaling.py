"""How the tracker's cost grows with the image size and the mesh size (not a test).

    python bench/bench_scaling.py [--case DIR] [--frames 60] [--out bench/results/scaling.json]

Runs the default tracker (config/navigator.yaml) over the first ``--frames`` frames of a case
(default: the first tracking case of ``data/bench``, else a 200 px case written to
``runs/scaling_case``) and reports processed frames per second (mean over frames, end to end:
conversion, undistortion, encoder, registration) and the mean translation error:

- image size 64 / 96 / 128 / 200 / 256 px (the frames resized, the camera scaled with them; the
  encoder input and the solver pyramid are fixed sizes, so the cost should barely move); and the
  accuracy of procedures filmed at each size (``--native-seeds``: the same procedure rendered at
  that size, with the sensor's noise per pixel, written once to ``runs/scaling_native``; tracked
  over ``--native-frames`` frames), which a smaller camera gets;
- the field of view (``--fovs``: the same procedures filmed at 200 px by a centred camera of
  70-120 deg), with the default ``max_fov_deg`` and with the whole frame to the encoder;
- mesh size ~60k / ~240k / ~950k faces (the same anatomy from a CT at 1.4 mm and 0.7 mm voxels,
  and the 0.7 mm mesh subdivided once).

Prints a Markdown table (pasted into the README's performance section) and writes JSON.
One torch thread, one BLAS thread (the defaults). Timings on a shared 2-core machine vary by up
to ~1.5x between runs; compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bronchopt_ros.threads import limit_threads  # noqa: E402

limit_threads(1)

import cv2  # noqa: E402

from bronchopt_ros.airway import Airway  # noqa: E402
from bronchopt_ros.cli.evaluate import pipeline_from_yaml  # noqa: E402
from bronchopt_ros.evaluation import load_case_airway, pose_at_stamp, truth_by_stamp  # noqa: E402
from bronchopt_ros.io.bag import read_case_bag  # noqa: E402
from bronchopt_ros.pipeline import build_tracker, load_default_encoder, prepare_frame  # noqa: E402


def default_case() -> Path:
    cands = sorted((ROOT / "data" / "bench" / "tracking").glob("case_*"))
    if cands:
        return cands[0]
    from bronchopt_ros.sim.case import CaseParams, write_case

    out = ROOT / "runs" / "scaling_case"
    if not (out / "case.json").exists():
        write_case(out, 3100, CaseParams(n_frames=120, starts=False), progress=True)
    return out


def load_events(case: Path, n: int):
    cam, init, frames = None, None, []
    for ev in read_case_bag(case / "procedure"):
        if ev.kind == "camera_info":
            cam = ev.data
        elif ev.kind == "initialpose":
            init = ev.data
        elif ev.kind == "image" and len(frames) < n:
            frames.append((ev.stamp_s, ev.data))
    return cam, init, frames


def run(airway, cfg, encoder, cam, init, frames, truth, size: int | None = None) -> dict:
    # Every frame registered before the next (as bronchopt eval does): the whole per-frame cost.
    cfg = replace(cfg, tracker=replace(cfg.tracker, registration_wait_s=math.inf))
    tracker = build_tracker(airway, cfg, encoder=encoder)
    tracker.initialise(init)
    times, errs = [], []
    for k, (stamp, rgb) in enumerate(frames):
        t0 = time.perf_counter()
        c = cam
        if size is not None and size != rgb.shape[1]:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if size < rgb.shape[1] else cv2.INTER_LINEAR)
            c = cam.scaled(size, size)
        frame = prepare_frame(rgb, c, stamp, max(256, size or 0))
        res = tracker.process(frame)
        if k > 0:  # the first frame is the (re)initialisation search
            times.append(time.perf_counter() - t0)
        gt = pose_at_stamp(truth, stamp)
        if res.pose is not None and gt is not None:
            errs.append(res.pose.translation_error(gt) * 1e3)
    tracker.close()
    return {"fps": float(1.0 / np.mean(times)), "ms_p50": float(1e3 * np.median(times)),
            "ms_p95": float(1e3 * np.percentile(times, 95)), "trans_err_mm_mean": float(np.mean(errs)),
            "faces": int(len(airway.faces))}


def native_case(seed: int, size: int, n: int, fov_deg: float | None = None):
    """(airway, camera, initial pose, frames, truth) of procedure ``seed`` filmed at ``size`` px
    (with a centred camera of ``fov_deg`` when given; written to runs/scaling_native once)."""
    from bronchopt_ros.sim.case import CaseParams, write_case

    case = ROOT / "runs" / "scaling_native" / (f"case_{seed}_{size}px_{n}" + (f"_fov{fov_deg:g}" if fov_deg else ""))
    if not (case / "truth.tum").exists():
        write_case(case, seed, CaseParams(size=size, n_frames=n, starts=False, fov_deg=fov_deg))
    cam, init, frames = load_events(case, n)
    return load_case_airway(case), cam, init, frames, truth_by_stamp(case)


def _args(native, cfg, encoder):
    """run()'s arguments for a :func:`native_case`."""
    airway, cam, init, frames, truth = native
    return airway, cfg, encoder, cam, init, frames, truth


def meshes(case: Path, info: dict) -> list[tuple[str, Airway]]:
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy

    base = load_case_airway(case)
    coarse = generate_anatomy(int(info["seed"]), AnatomyParams(voxel_mm=1.4)).airway
    coarse.centerline = base.centerline
    import trimesh

    v, f = trimesh.remesh.subdivide(base.vertices, base.faces)
    fine = Airway(np.asarray(v), np.asarray(f))
    fine.centerline = base.centerline
    return [("CT 1.4 mm", coarse), ("CT 0.7 mm (cases)", base), ("0.7 mm subdivided", fine)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 200, 256])
    ap.add_argument("--native-seeds", type=int, nargs="*", default=[3101, 3102],
                    help="test-split procedures filmed at each size (none: skip)")
    ap.add_argument("--native-frames", type=int, default=450)  # the benchmark's 15 s procedures (shorter ones are
    # time-squeezed: a 5 s one starts with 2 mm steps, which tests the start from rest, not the size)
    ap.add_argument("--fovs", type=float, nargs="*", default=[70.0, 85.0, 100.0, 120.0],
                    help="fields of view (deg) the --native-seeds procedures are also filmed at (200 px)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling.json")
    args = ap.parse_args()
    case = args.case or default_case()
    info = json.loads((case / "case.json").read_text())
    cfg = pipeline_from_yaml(None)
    cfg.relocalisation = False  # startup cost only; not part of the per-frame cost
    encoder = load_default_encoder(cfg)
    cam, init, frames = load_events(case, args.frames)
    truth = truth_by_stamp(case)
    base = load_case_airway(case)
    rows_img = []
    for s in args.sizes:
        r = run(base, cfg, encoder, cam, init, frames, truth, size=s)
        native = []
        for seed in args.native_seeds:
            n_airway, n_cam, n_init, n_frames, n_truth = native_case(seed, s, args.native_frames)
            native.append(run(n_airway, cfg, encoder, n_cam, n_init, n_frames, n_truth))
        if native:
            r["native_trans_err_mm_mean"] = float(np.mean([n["trans_err_mm_mean"] for n in native]))
            r["native_trans_err_mm"] = {str(seed): n["trans_err_mm_mean"] for seed, n in zip(args.native_seeds, native)}
        rows_img.append({"image_px": s, **r})
        print(f"image {s:4d} px: {r['fps']:5.1f} frames/s  p95 {r['ms_p95']:5.1f} ms  error {r['trans_err_mm_mean']:.2f} mm"
              + (f"  filmed at {s} px: {r['native_trans_err_mm_mean']:.2f} mm" if native else ""), flush=True)
    rows_fov = []
    for fov in args.fovs if args.native_seeds else []:
        row = {"fov_deg": fov}
        for name, mf in (("default", cfg.max_fov_deg), ("whole_frame", 0.0)):
            c = replace(cfg, max_fov_deg=mf)
            errs = [run(*_args(native_case(seed, 200, args.native_frames, fov), c, encoder))["trans_err_mm_mean"]
                    for seed in args.native_seeds]
            row[name] = float(np.mean(errs))
        rows_fov.append(row)
        print(f"field of view {fov:5.1f} deg: {row['default']:.2f} mm (the whole frame to the encoder: "
              f"{row['whole_frame']:.2f} mm)", flush=True)
    rows_mesh = []
    for name, airway in meshes(case, info):
        r = run(airway, cfg, encoder, cam, init, frames, truth)
        rows_mesh.append({"mesh": name, **r})
        print(f"mesh {name:20s} {r['faces']:8d} faces: {r['fps']:5.1f} frames/s  p95 {r['ms_p95']:5.1f} ms  "
              f"error {r['trans_err_mm_mean']:.2f} mm", flush=True)
    nat = f"mean error, filmed at this size ({len(args.native_seeds)} procedures, {args.native_frames} frames)"
    md = [f"| image (px) | frames/s | p95 ms/frame | mean error, resized ({len(frames)} frames) | {nat} |",
          "| --- | --- | --- | --- | --- |"]
    md += [f"| {r['image_px']} | {r['fps']:.1f} | {r['ms_p95']:.1f} | {r['trans_err_mm_mean']:.2f} mm | "
           + (f"{r['native_trans_err_mm_mean']:.2f} mm |" if "native_trans_err_mm_mean" in r else "- |") for r in rows_img]
    if rows_fov:
        md += ["", f"| field of view (deg, 200 px) | mean error, filmed ({len(args.native_seeds)} procedures) | "
               f"... the whole frame to the encoder (max_fov_deg 0) |", "| --- | --- | --- |"]
        md += [f"| {r['fov_deg']:g} | {r['default']:.2f} mm | {r['whole_frame']:.2f} mm |" for r in rows_fov]
    md += ["", "| mesh | faces | frames/s | p95 ms/frame |", "| --- | --- | --- | --- |"]
    md += [f"| {r['mesh']} | {r['faces']:,} | {r['fps']:.1f} | {r['ms_p95']:.1f} |" for r in rows_mesh]
    print("\n".join(md))
    res = {"case": str(case.relative_to(ROOT)) if case.is_relative_to(ROOT) else str(case), "frames": len(frames),
           "encoder": encoder.backend_name, "image_sizes": rows_img, "fields_of_view": rows_fov, "meshes": rows_mesh,
           "markdown": "\n".join(md),
           "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": 2},
           "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    (args.out.with_suffix(".md")).write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
