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
                  extend_root_mm: float = 30.0, lungs=None) -> CTVolume:
    """CT volume (int16 HU, affine voxel -> CT frame in mm) of the tubes of ``centerline``.

    ``params`` is an :class:`~bronchopt_ros.sim.anatomy.AnatomyParams` (its voxel size, wall
    fraction, noise, blur and margin are used). The trachea's open end is extended by
    ``extend_root_mm`` beyond the volume's top so the trachea is cut by the top slice, as in a
    chest CT. ``lungs`` (a :class:`~bronchopt_ros.sim.anatomy.LungModel`, mm) is where the
    parenchyma goes; without it, ellipsoids around the left and right subtrees.
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

    # Signed distances (mm, clipped to +-_FAR, float16 to save memory: ~0.004 mm steps): to the
    # lumen surface and to the outer wall surface; `cart` the cartilage weight (0..1) of the wall.
    sd_lumen = np.full(shape, _FAR, dtype=np.float16)
    sd_outer = np.full(shape, _FAR, dtype=np.float16)
    cart = np.zeros(shape, dtype=np.float16)
    for b, pts, rad in branches:
        _add_tube(b.generation, pts, rad, p.wall_fraction, vox, lo, shape, sd_lumen, sd_outer, cart)

    # Tissue around the tree: lung parenchyma in soft tissue.
    in_lung = lungs.contains if lungs is not None else _ellipsoid_lungs(centerline)
    grid = [np.arange(n, dtype=np.float32) * vox + lo[a] for a, n in enumerate(shape)]
    f = 2  # the texture is made on a 2x coarser grid and upsampled (nearest; the PSF smooths it)
    coarse = tuple(int(np.ceil(n / f)) + 1 for n in shape)
    texture = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), max(2.0, 3.0 / vox) / f)
    texture *= np.float32(35.0 / max(float(texture.std()), 1e-6))
    jj, kk = np.arange(shape[1]) // f, np.arange(shape[2]) // f
    hu = np.empty(shape, dtype=np.float32)
    slab = 16
    for i0 in range(0, shape[0], slab):
        i1 = min(i0 + slab, shape[0])
        x = grid[0][i0:i1, None, None]
        lung = np.broadcast_to(in_lung(x, grid[1][None, :, None], grid[2][None, None, :]),
                               (i1 - i0, shape[1], shape[2]))
        tex = texture[np.arange(i0, i1) // f][:, jj][:, :, kk]
        h = np.where(lung, np.float32(HU_PARENCHYMA) + tex, np.float32(HU_SOFT_TISSUE))
        # Wall between the lumen and the outer wall surface; box-filtered partial volume at both
        # edges (a linear ramp one voxel wide).
        f_wall = np.clip(0.5 - sd_outer[i0:i1].astype(np.float32) / vox, 0.0, 1.0)
        wall_hu = HU_WALL + (HU_CARTILAGE - HU_WALL) * cart[i0:i1].astype(np.float32)
        h += f_wall * (wall_hu - h)
        f_lumen = np.clip(0.5 - sd_lumen[i0:i1].astype(np.float32) / vox, 0.0, 1.0)
        h += f_lumen * (np.float32(HU_AIR) - h)
        hu[i0:i1] = h
    del sd_lumen, sd_outer, cart, texture
    if p.blur_voxels > 0:  # point-spread function (in place)
        ndimage.gaussian_filter(hu, p.blur_voxels, truncate=3.0, output=hu)
    out = np.empty(shape, dtype=np.int16)
    for i0 in range(0, shape[0], slab):
        h = hu[i0:i0 + slab]
        if p.noise_hu > 0:
            h = h + rng.standard_normal(h.shape, dtype=np.float32) * np.float32(p.noise_hu)
        out[i0:i0 + slab] = np.round(np.clip(h, -1024, 3071))
    return CTVolume(out, affine)


def _add_tube(generation: int, pts: np.ndarray, rad: np.ndarray, wall_fraction: float, vox: float,
              lo: np.ndarray, shape: tuple, sd_lumen: np.ndarray, sd_outer: np.ndarray,
              cart: np.ndarray) -> None:
    """Merge one branch's tube into the distance fields, inside its bounding box only."""
    dense, r_d, s_d = _resample(pts, rad, 0.25 * vox)
    wall = wall_fraction * 2 * r_d
    reach = float((r_d + wall).max()) + 2 * vox
    blo = np.maximum(np.floor(((dense.min(0) - reach) - lo) / vox).astype(int), 0)
    bhi = np.minimum(np.ceil(((dense.max(0) + reach) - lo) / vox).astype(int) + 1, shape)
    if np.any(bhi <= blo):
        return
    ii, jj, kk = np.meshgrid(*[np.arange(a, c) for a, c in zip(blo, bhi)], indexing="ij")
    xyz = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3) * vox + lo
    dist, idx = cKDTree(dense).query(xyz, distance_upper_bound=reach)
    near = np.isfinite(dist)
    if not near.any():
        return
    sel = (ii.ravel()[near], jj.ravel()[near], kk.ravel()[near])
    i = idx[near]
    dl = dist[near] - r_d[i]
    do = dl - wall[i]
    sd_lumen[sel] = np.minimum(sd_lumen[sel], dl)
    cur_o = sd_outer[sel]
    better = do < cur_o
    sd_outer[sel] = np.where(better, do, cur_o)
    # Cartilage: C-shaped rings (~4 mm pitch) in the trachea and main bronchi, plates further down.
    if generation <= 1:
        ring = (np.sin(2 * np.pi * s_d[i] / 4.0) > -0.2).astype(np.float32)
    else:
        ring = np.full(len(i), 0.6, dtype=np.float32)
    cart[sel] = np.where(better, ring, cart[sel])


def _ellipsoid_lungs(cl: Centerline):
    """``contains(x, y, z)`` of an ellipsoid (mm) around each lung's subtree (generation >= 2)."""
    side = _side_of_branches(cl)
    ells = []
    for s in (1, -1):
        pts = [b.points * 1e3 for b in cl.branches if side.get(b.id) == s and b.generation >= 2]
        if pts:
            pts = np.concatenate(pts)
            ells.append((0.5 * (pts.min(0) + pts.max(0)), 0.5 * np.ptp(pts, axis=0) * 1.35 + 10.0))

    def contains(x, y, z):
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        for c, a in ells:
            out |= ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2 <= 1.0
        return out

    return contains


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
