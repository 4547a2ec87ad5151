"""A synthetic chest CT (Hounsfield units) from an airway centerline's tube geometry.

Every branch is a tube (its centerline points with their radii), round unless
``AnatomyParams.lumen_ellipticity`` / ``lumen_lobes`` give its cross-section an elliptic and a
lobed (3-6 folds) shape that varies along it; the lumen is the union of the tubes, the bronchial
wall a ring of thickness ``wall_fraction`` x the diameter around each tube, brighter where it
holds cartilage (rings in the trachea and main bronchi, plates in the smaller bronchi). Around
the tree: lung parenchyma (~ -850 HU with a smooth texture) in two
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
    shape_rng = np.random.default_rng([int(seed), 0x5A])  # (its own stream: round tubes draw nothing)
    for b, pts, rad in branches:
        prof = None
        if p.lumen_ellipticity > 0 or p.lumen_lobes > 0:
            prof = LumenProfile.draw(shape_rng, p.lumen_ellipticity, p.lumen_lobes)
        _add_tube(b.generation, pts, rad, p.wall_fraction, vox, lo, shape, sd_lumen, sd_outer, cart, prof)

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


class LumenProfile:
    """A branch's cross-section: radius x (1 + e cos 2(phi - phi0) + sum_k a_k cos k(phi - phi_k))
    about its centerline, k = 3..6 (the folds), each term's amplitude breathing along the branch
    (x (1 + 0.5 sin(2 pi s / wavelength + psi))). phi is measured in a frame carried along the
    branch (its tangent and a normal as square as possible to the CT's z axis)."""

    def __init__(self, e: float, phi0: float, a: np.ndarray, phik: np.ndarray, wavelength: float, psi: np.ndarray):
        self.e, self.phi0, self.a, self.phik, self.wavelength, self.psi = e, phi0, a, phik, wavelength, psi

    @classmethod
    def draw(cls, rng: np.random.Generator, ellipticity: float, lobes: float) -> "LumenProfile":
        """Ellipticity |N(0, ellipticity)| (at most 0.3), fold amplitudes N(0, lobes / k) (each at
        most 0.15), phases uniform, a 10-25 mm wavelength along the branch."""
        e = min(abs(rng.normal(0.0, ellipticity)), 0.3) if ellipticity > 0 else 0.0
        ks = np.arange(3, 7)
        a = np.clip(rng.normal(0.0, 1.0, len(ks)) * lobes / ks, -0.15, 0.15) if lobes > 0 else np.zeros(len(ks))
        return cls(e, rng.uniform(0, np.pi), a, rng.uniform(0, 2 * np.pi, len(ks)), rng.uniform(10.0, 25.0),
                   rng.uniform(0, 2 * np.pi, 1 + len(ks)))

    def scale(self, phi: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Radius factor at angle ``phi`` (rad) and arc length ``s`` (mm)."""
        w = 1.0 + 0.5 * np.sin(2 * np.pi * s[:, None] / self.wavelength + self.psi[None, :])
        out = 1.0 + self.e * w[:, 0] * np.cos(2 * (phi - self.phi0))
        for j, k in enumerate(range(3, 7)):
            out += self.a[j] * w[:, 1 + j] * np.cos(k * (phi - self.phik[j]))
        return out


def _angle_about(dense: np.ndarray, idx: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Angle of each point ``xyz`` about the polyline ``dense`` at its nearest vertex ``idx``, in a
    frame of the local tangent and a normal as square as possible to the z axis."""
    t = np.gradient(dense, axis=0)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    ref = np.where(np.abs(t[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    n = np.cross(t, ref)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    b = np.cross(t, n)
    v = xyz - dense[idx]
    return np.arctan2(np.einsum("ij,ij->i", v, b[idx]), np.einsum("ij,ij->i", v, n[idx]))


def _add_tube(generation: int, pts: np.ndarray, rad: np.ndarray, wall_fraction: float, vox: float,
              lo: np.ndarray, shape: tuple, sd_lumen: np.ndarray, sd_outer: np.ndarray,
              cart: np.ndarray, profile: LumenProfile | None = None) -> None:
    """Merge one branch's tube into the distance fields, inside its bounding box only (its
    cross-section round, or shaped by ``profile``)."""
    dense, r_d, s_d = _resample(pts, rad, 0.25 * vox)
    wall = wall_fraction * 2 * r_d
    grow = 1.0 if profile is None else 1.0 + profile.e * 1.5 + float(np.abs(profile.a).sum()) * 1.5
    reach = float((r_d * grow + wall).max()) + 2 * vox
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
    r_i = r_d[i]
    if profile is not None:
        r_i = r_i * profile.scale(_angle_about(dense, i, xyz[near]), s_d[i])
    dl = dist[near] - r_i
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
