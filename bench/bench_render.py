"""Renderer / optimiser timing benchmark (not a test).

    python bench/bench_render.py [--quick] [--out bench/results/render.json] [--threads 1]
                                 [--backend cpu|nvdiffrast|auto]

For meshes of ~50k / 200k / 1M faces and images of 64 / 128 / 200 px it times (median over
repeats, milliseconds): the visibility pass alone (``cast``), a depth render, a render with the
closed-form Jacobian, the closed-form Jacobian alone, one autograd step of the differentiable
depth (forward + backward of a scalar loss), and full refinements from the paper's "easy"
start (2 mm / 0.14 rad) with Gauss-Newton/LM and with Adam on log-depth residuals against the
depth rendered at the true pose (iterations, time and final error of the median of 3 runs).
The machine is shared: timings vary by up to 2x between runs.

Meshes come from the real LIDC airway label map (``/work/shared/data/airway_lidc487_label.nii.gz``,
marching cubes of the smoothed mask at the resolution that gives the wanted face count); without
it, from the procedural Y airway of ``test/fixtures_render.py``. Derived meshes are not written.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bronchopt_ros.geometry import Camera, Pose  # noqa: E402
from bronchopt_ros.optimize import (AdamConfig, GNConfig, adam_refine, depth_loss_at,  # noqa: E402
                                    depth_residual_fn, gauss_newton)
from bronchopt_ros.render import make_renderer  # noqa: E402
from bronchopt_ros.render.projection import depth_jacobian  # noqa: E402

LIDC = Path("/work/shared/data/airway_lidc487_label.nii.gz")
EASY = np.array([1.2, -1.1, 1.1, 0.08, -0.09, 0.07])  # 2 mm (camera frame) / 0.14 rad start offset


# ---------------------------------------------------------------------- meshes
def lidc_meshes(targets: list[int]) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], Pose]:
    """Meshes of the LIDC airway near each target face count (metres) and a trachea pose."""
    import nibabel as nib
    import trimesh
    from scipy import ndimage
    from skimage.measure import marching_cubes

    img = nib.load(str(LIDC))
    mask = np.asarray(img.dataobj) > 0
    lab, _ = ndimage.label(mask)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    mask = lab == sizes.argmax()
    nz = np.argwhere(mask)
    lo, hi = np.maximum(nz.min(0) - 3, 0), np.minimum(nz.max(0) + 4, mask.shape)
    field = ndimage.gaussian_filter(np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32), 2), 0.7)
    A = img.affine
    out = []
    base = None
    for target in targets:
        # faces scale with the square of the sampling density
        s = 1.0 if base is None else float(np.sqrt(target / base))
        for _ in range(3):
            f = field if abs(s - 1.0) < 1e-3 else ndimage.zoom(field, s, order=1)
            v, fc, _, _ = marching_cubes(f, 0.5, allow_degenerate=False)
            if base is None:
                base = len(fc)
                s = float(np.sqrt(target / base))
                continue
            if abs(len(fc) / target - 1) < 0.15:
                break
            s *= float(np.sqrt(target / len(fc)))
        idx = v / s + lo - 2
        verts = (idx @ A[:3, :3].T + A[:3, 3]) * 1e-3
        m = trimesh.Trimesh(verts, fc, process=True)
        if m.volume < 0:
            m.invert()
        out.append((f"lidc_{len(m.faces) // 1000}k", np.asarray(m.vertices), np.asarray(m.faces)))
    # camera in the trachea: centre of the top-most axial slab, looking down its axis
    vox = np.argwhere(mask)
    world = vox @ A[:3, :3].T + A[:3, 3]
    sup = world[:, 2]
    top = world[sup > sup.max() - 25.0]
    c_top = top[top[:, 2] < sup.max() - 15.0].mean(0)
    c_low = world[(sup < sup.max() - 35.0) & (sup > sup.max() - 45.0)]
    c_low = c_low[np.linalg.norm(c_low[:, :2] - c_top[:2], axis=1) < 12.0].mean(0)
    pose = Pose.look_at(c_top * 1e-3, c_low * 1e-3, up=(0.0, 1.0, 0.0))
    return out, pose


def procedural_meshes(targets: list[int]) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], Pose]:
    sys.path.insert(0, str(ROOT / "test"))
    from fixtures_render import trachea_pose, y_airway

    out = []
    for target in targets:
        # ~25k faces at 0.75 mm voxels; faces ~ 1 / voxel^2
        a = y_airway(round(0.75 * float(np.sqrt(25_000 / target)), 4))
        out.append((f"yairway_{len(a.faces) // 1000}k", a.vertices, a.faces))
    return out, trachea_pose(30.0)


# ---------------------------------------------------------------------- timing
def med_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def bench_one(renderer, cam: Camera, gt: Pose, repeats: int, refine: bool, refine_repeats: int = 3) -> dict:
    row: dict = {}
    row["cast_ms"] = med_ms(lambda: renderer.cast(cam, gt), repeats)
    row["render_ms"] = med_ms(lambda: renderer.render(cam, gt, normals=False), repeats)
    row["render_jacobian_ms"] = med_ms(lambda: renderer.render(cam, gt, normals=False, jacobian=True), repeats)
    planes, _ = renderer.hit_planes(cam, gt)
    row["jacobian_ms"] = med_ms(lambda: depth_jacobian(planes), repeats)
    f = renderer.depth_fn(cam, gt)

    def step():
        xi = torch.zeros(6, requires_grad=True)
        torch.log(f.values(xi).clamp_min(1e-6)).square().mean().backward()
    row["fwd_bwd_ms"] = med_ms(step, repeats)
    row["valid_fraction"] = float(planes.count / (cam.width * cam.height))
    if refine:
        start = gt.retract(EASY * np.r_[1e-3, 1e-3, 1e-3, 1, 1, 1])
        target = renderer.render(cam, gt).depth
        for name, run in (
            ("gn", lambda: gauss_newton(depth_residual_fn(renderer, cam, target, kind="log"), start, GNConfig())),
            ("adam", lambda: adam_refine(depth_loss_at(renderer, cam, target, kind="log"), start, AdamConfig())),
        ):
            runs = [run() for _ in range(refine_repeats)]
            res = sorted(runs, key=lambda x: x.time_s)[len(runs) // 2]  # the median run
            row[f"{name}_ms"] = res.time_s * 1e3
            row[f"{name}_iters"] = res.iterations
            row[f"{name}_ms_per_iter"] = res.time_s * 1e3 / max(res.iterations, 1)
            row[f"{name}_trans_err_mm"] = res.pose.translation_error(gt) * 1e3
            row[f"{name}_rot_err_rad"] = res.pose.rotation_error(gt)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one mesh, 64/128 px, few repeats")
    ap.add_argument("--out", default=str(ROOT / "bench/results/render.json"))
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these small ops)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "nvdiffrast", "auto"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = [50_000] if args.quick else [50_000, 200_000, 1_000_000]
    sizes = [64, 128] if args.quick else [64, 128, 200]
    repeats = 5 if args.quick else 15
    t0 = time.perf_counter()
    meshes, gt = lidc_meshes(targets) if LIDC.exists() else procedural_meshes(targets)
    print(f"meshes ready in {time.perf_counter() - t0:.1f} s: " + ", ".join(f"{n} ({len(f)} faces)" for n, _, f in meshes))
    base_cam = Camera(200, 200, 110.21, 110.31, 100.58, 103.69)  # the paper's benchmark camera
    # warm-up: the first torch.optim / autograd use pays seconds of imports
    warm = make_renderer((meshes[0][1], meshes[0][2]), backend=args.backend)
    bench_one(warm, base_cam.scaled(32), gt, 1, refine=True, refine_repeats=1)
    rows = []
    hdr = (f"{'mesh':>12} {'px':>4} {'cast':>6} {'render':>7} {'rend+J':>7} {'J':>5} {'fwd+bwd':>7} "
           f"{'GN ms':>7} {'it':>3} {'GN mm':>7} {'Adam ms':>8} {'it':>4} {'Adam mm':>7}")
    print(hdr)
    for name, v, f in meshes:
        r = make_renderer((v, f), backend=args.backend)
        if not r.inside(base_cam.scaled(64), gt):
            print(f"warning: benchmark pose is not inside the lumen of {name}")
        for size in sizes:
            cam = base_cam.scaled(size)
            row = bench_one(r, cam, gt, repeats, refine=True, refine_repeats=1 if args.quick else 3)
            row.update(mesh=name, faces=int(len(f)), px=size, backend=r.name)
            rows.append(row)
            print(f"{name:>12} {size:>4} {row['cast_ms']:6.2f} {row['render_ms']:7.2f} {row['render_jacobian_ms']:7.2f} "
                  f"{row['jacobian_ms']:5.2f} {row['fwd_bwd_ms']:7.2f} {row['gn_ms']:7.1f} {row['gn_iters']:3d} "
                  f"{row['gn_trans_err_mm']:7.4f} {row['adam_ms']:8.1f} {row['adam_iters']:4d} {row['adam_trans_err_mm']:7.4f}",
                  flush=True)
    out = {
        "machine": {"cpu_count": __import__("os").cpu_count(), "torch": torch.__version__, "threads": args.threads,
                    "platform": platform.platform(), "cuda": torch.cuda.is_available()},
        "mesh_source": "lidc487" if LIDC.exists() else "procedural_y",
        "start_offset_xi": EASY.tolist(),
        "units": "ms (median), mm, rad",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
