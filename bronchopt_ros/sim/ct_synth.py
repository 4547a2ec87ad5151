"""A synthetic chest CT (Hounsfield units) from an airway centerline's tube geometry.

Every branch is a tube (its centerline points with their radii); the lumen is the union of the
tubes, the bronchial wall a ring of thickness ``wall_fraction`` x the diameter around each
tube, brighter where it holds cartilage (rings in the trachea and main bronchi, plates in the
smaller bronchi). Around the tree: lung parenchyma (~ -850 HU with a smooth texture) in two
ellipsoids enclosing the left and right subtrees, soft tissue (mediastinum, ~ +40 HU)
elsewhere. The image is box-filtered at the lumen edge (partial volume), blurred by a Gaussian
point-spread function and given Gaussian noise.

Efficiency: the tube distance field is evaluated only inside each branch's bounding box
(KD-tree of densely resampled centerline points, with a distance cut-off), and the volume only
spans the tree plus a margin. Memory: about 10 bytes per voxel at the peak.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..airway.centerline import Centerline
from ..airway.ct import CTVolume

__all__ = ["synthesize_ct", "HU_AIR", "HU_PARENCHYMA", "HU_SOFT_TISSUE", "HU_WALL", "HU_CARTILAGE"]

HU_AIR = -1000.0
HU_PARENCHYMA = -850.0
HU_SOFT_TISSUE = 40.0
HU_WALL = 20.0
HU_CARTILAGE = 180.0
_FAR = 8.0  # mm: distance fields are clipped here


def _resample(points: np.ndarray, radii: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``step`` mm along a polyline, their radii and arc length."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    si = np.linspace(0.0, s[-1], n)
    pts = np.stack([np.interp(si, s, points[:, k]) for k in range(3)], axis=1)
    return pts, np.interp(si, s, radii), si


def synthesize_ct(centerline: Centerline, params=None, seed: int = 0,
                  extend_root_mm: float = 30.0) -> CTVolume:
    """CT volume (int16 HU, affine voxel -> CT frame in mm) of the tubes of ``centerline``.

    ``params`` is an :class:`~bronchopt_ros.sim.anatomy.AnatomyParams` (its voxel size, wall
    fraction, noise, blur and margin are used). The trachea's open end is extended by
    ``extend_root_mm`` beyond the volume's top so the trachea is cut by the top slice, as in a
    chest CT.
    """
    from .anatomy import AnatomyParams

    p = params or AnatomyParams()
    rng = np.random.default_rng([int(seed), 0xC7])
    vox = float(p.voxel_mm)
    branches = []
    for b in centerline.branches:
        pts = b.points * 1e3
        rad = b.radii * 1e3
        if b.parent < 0 and extend_root_mm > 0:
            d = pts[0] - pts[1]
            d /= np.linalg.norm(d)
            pts = np.vstack([pts[0] + d * extend_root_mm, pts])
            rad = np.concatenate([[rad[0]], rad])
        branches.append((b, pts, rad))

    # Volume: the tree's extent (outer wall included) plus a margin; its top cuts the trachea's
    # open end.
    all_pts = np.concatenate([b.points * 1e3 for b in centerline.branches])
    all_r = np.concatenate([b.radii * 1e3 for b in centerline.branches])
    rmax = all_r * (1 + 2 * p.wall_fraction)
    lo = (all_pts - rmax[:, None]).min(0) - p.margin_mm
    hi = (all_pts + rmax[:, None]).max(0) + p.margin_mm
    root = centerline.root.points[0] * 1e3
    hi[2] = root[2]  # the top slice passes through the trachea's open end
    shape = tuple(int(v) for v in np.ceil((hi - lo) / vox).astype(int) + 1)
    affine = np.diag([vox, vox, vox, 1.0])
    affine[:3, 3] = lo

    # Signed distances (mm, clipped to +-_FAR): to the lumen surface and to the outer wall
    # surface; `cart` the cartilage weight (0..1) of the wall voxels.
    sd_lumen = np.full(shape, _FAR, dtype=np.float32)
    sd_outer = np.full(shape, _FAR, dtype=np.float32)
    cart = np.zeros(shape, dtype=np.float32)
    for b, pts, rad in branches:
        dense, r_d, s_d = _resample(pts, rad, 0.25 * vox)
        wall = p.wall_fraction * 2 * r_d
        reach = float((r_d + wall).max()) + 2 * vox
        blo = np.floor(((dense.min(0) - reach) - lo) / vox).astype(int)
        bhi = np.ceil(((dense.max(0) + reach) - lo) / vox).astype(int) + 1
        blo = np.maximum(blo, 0)
        bhi = np.minimum(bhi, shape)
        if np.any(bhi <= blo):
            continue
        ii, jj, kk = np.meshgrid(*[np.arange(a, c) for a, c in zip(blo, bhi)], indexing="ij")
        xyz = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3) * vox + lo
        dist, idx = cKDTree(dense).query(xyz, distance_upper_bound=reach)
        near = np.isfinite(dist)
        if not near.any():
            continue
        sel = (ii.ravel()[near], jj.ravel()[near], kk.ravel()[near])
        i = idx[near]
        dl = (dist[near] - r_d[i]).astype(np.float32)
        do = (dl - wall[i]).astype(np.float32)
        cur_l = sd_lumen[sel]
        sd_lumen[sel] = np.minimum(cur_l, dl)
        cur_o = sd_outer[sel]
        better_o = do < cur_o
        sd_outer[sel] = np.where(better_o, do, cur_o)
        # Cartilage: C-shaped rings (~4 mm pitch) in the trachea and main bronchi, irregular
        # plates further down; in the outer part of the wall.
        if b.generation <= 1:
            ring = (np.sin(2 * np.pi * s_d[i] / 4.0) > -0.2).astype(np.float32)
        else:
            ring = np.full(len(i), 0.6, dtype=np.float32)
        cart[sel] = np.where(better_o, ring, cart[sel])

    # Tissue around the tree: lungs (ellipsoids around each side's subtree) in soft tissue.
    hu = np.full(shape, HU_SOFT_TISSUE, dtype=np.float32)
    side = _side_of_branches(centerline)
    grid = [np.arange(n, dtype=np.float32) * vox + lo[a] for a, n in enumerate(shape)]
    lung = np.zeros(shape, dtype=bool)
    for s in (1, -1):
        pts = [b.points * 1e3 for b in centerline.branches if side.get(b.id) == s and b.generation >= 2]
        if not pts:
            continue
        pts = np.concatenate(pts)
        c = 0.5 * (pts.min(0) + pts.max(0))
        ax = 0.5 * (pts.max(0) - pts.min(0)) * 1.35 + 10.0
        e = ((grid[0][:, None, None] - c[0]) / ax[0]) ** 2 + ((grid[1][None, :, None] - c[1]) / ax[1]) ** 2
        lung |= (e + ((grid[2][None, None, :] - c[2]) / ax[2]) ** 2) <= 1.0
    texture = _smooth_noise(shape, rng, scale_vox=max(2.0, 3.0 / vox))
    hu[lung] = HU_PARENCHYMA + 35.0 * texture[lung]
    del texture, lung

    # Wall: between the lumen and outer wall surfaces; box-filter partial volume at both edges.
    f_lumen = np.clip(0.5 - sd_lumen / vox, 0.0, 1.0)
    f_wall = np.clip(0.5 - sd_outer / vox, 0.0, 1.0)  # inside the outer surface (lumen too)
    del sd_outer
    wall_hu = HU_WALL + (HU_CARTILAGE - HU_WALL) * cart
    del cart
    hu = hu + f_wall * (wall_hu - hu)
    hu = hu + f_lumen * (HU_AIR - hu)
    del f_wall, f_lumen, wall_hu, sd_lumen
    if p.blur_voxels > 0:
        hu = ndimage.gaussian_filter(hu, p.blur_voxels, truncate=3.0)
    if p.noise_hu > 0:
        hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(p.noise_hu)
    np.clip(hu, -1024, 3071, out=hu)
    return CTVolume(np.round(hu).astype(np.int16), affine)


def _side_of_branches(cl: Centerline) -> dict[int, int]:
    """+1 for branches of the right lung (+x main bronchus), -1 left, 0 trachea."""
    root = cl.root
    out = {root.id: 0}
    kids = cl.children(root.id)
    for k in kids:
        s = 1 if (k.points[-1, 0] - k.points[0, 0]) > 0 else -1
        stack = [k]
        while stack:
            b = stack.pop()
            out[b.id] = s
            stack += cl.children(b.id)
    return out


def _smooth_noise(shape: tuple[int, int, int], rng: np.random.Generator, scale_vox: float) -> np.ndarray:
    """Unit-variance smooth noise (correlation length ~``scale_vox`` voxels), made coarse and
    upsampled to save time."""
    f = 2
    coarse = tuple(int(np.ceil(n / f)) + 1 for n in shape)
    g = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), scale_vox / f)
    g /= max(float(g.std()), 1e-6)
    up = ndimage.zoom(g, f, order=1, prefilter=False)
    return up[: shape[0], : shape[1], : shape[2]]
