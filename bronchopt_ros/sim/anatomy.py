"""Synthetic bronchial trees after Kitaoka's rules, with a CT and a lumen mesh made from them.

:func:`generate_centerline` grows the branch graph alone; :func:`generate_anatomy` adds a
synthetic CT (:mod:`bronchopt_ros.sim.ct_synth`) and extracts the lumen surface from that CT
through the same path users' NIfTI volumes take (threshold segmentation -> marching cubes,
:mod:`bronchopt_ros.airway.ct`), so the mesh has the look of real data.

The tree (Kitaoka, Takaki & Suki, J Appl Physiol 1999, simplified: no lung-volume model):

* the trachea runs down (-z, with a slight posterior tilt) from its open end, ~110 mm long and
  ~18 mm wide; its first split sends the larger share to the right main bronchus (+x);
* every bifurcation draws a flow split ``r`` (Beta-distributed around 0.5, clipped to 0.05-0.95);
  the daughters get diameters ``d0 r^(1/n)`` and ``d0 (1-r)^(1/n)`` (``n = 2.8``) and branch
  angles ``cos th1 = (1 + r^(4/n) - (1-r)^(4/n)) / (2 r^(2/n))`` (and symmetrically ``th2``);
* a daughter's branching plane is turned ~90 deg from its parent's (plus seeded jitter);
* branch length ~3 diameters (terminal branches 3.3), with seeded log-normal variation, and a
  gentle seeded bend (a quadratic Bezier curve);
* a daughter that would run into an existing branch is re-aimed (its parent's branching plane is
  turned), then shortened, then dropped with its subtree.

Coordinates: the CT frame is RAS-like (+x the patient's right, +y anterior, +z superior), the
trachea's open end at the origin, in millimetres while generating; the returned :class:`~bronchopt_ros.airway.centerline.Centerline`
is in metres. Centerline points are ~1 mm apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial.transform import Rotation

from ..airway.centerline import Branch, Centerline
from ..airway.mesh import Airway

__all__ = ["AnatomyParams", "SyntheticAnatomy", "generate_anatomy", "generate_centerline",
           "RIGHT", "SUPERIOR", "ANTERIOR"]

#: Directions of the synthetic CT frame (RAS-like): the right main bronchus leaves towards +x.
RIGHT = np.array([1.0, 0.0, 0.0])
ANTERIOR = np.array([0.0, 1.0, 0.0])
SUPERIOR = np.array([0.0, 0.0, 1.0])


@dataclass
class AnatomyParams:
    """Shape of a synthetic airway and of its CT. Lengths in millimetres (CT convention)."""

    generations: int = 6  # generations below the trachea (trachea = 0, main bronchi = 1, ...)
    trachea_length_mm: float = 110.0
    trachea_diameter_mm: float = 18.0
    trachea_tilt_deg: float = 8.0  # the trachea runs down and slightly posterior
    carina_split: float = 0.55  # flow share of the right main bronchus
    diameter_exponent: float = 2.8  # Kitaoka's n
    length_ratio: float = 3.0  # branch length / diameter
    terminal_length_ratio: float = 3.3
    split_beta: float = 6.0  # flow split r ~ Beta(a, a); larger = more symmetric
    min_diameter_mm: float = 2.4  # thinner branches are not grown (CT at 0.7 mm would lose them)
    # Patient-to-patient variation (seeded):
    trachea_length_sd: float = 0.07  # relative
    trachea_diameter_sd: float = 0.07  # relative
    length_sd: float = 0.2  # relative (log-normal)
    diameter_sd: float = 0.05  # relative, on top of the flow split
    angle_sd_deg: float = 5.0
    plane_sd_deg: float = 15.0  # jitter of the ~90 deg branching-plane rotation
    bend: float = 0.06  # sd of the mid-branch sideways offset / length
    # Collision handling
    clearance_mm: float = 0.8  # min gap between the lumens of unrelated branches
    point_spacing_mm: float = 1.0
    # CT synthesis (see bronchopt_ros.sim.ct_synth)
    voxel_mm: float = 0.7
    wall_fraction: float = 0.15  # wall thickness / lumen diameter
    noise_hu: float = 20.0
    blur_voxels: float = 0.5  # Gaussian PSF sigma, voxels
    margin_mm: float = 12.0  # CT margin around the tree
    # Mesh extraction
    smooth_iterations: int = 10  # Taubin smoothing
    max_faces: int | None = 400_000  # decimate above this if a decimator is installed


@dataclass
class SyntheticAnatomy:
    """A generated patient: the airway (lumen mesh in metres + exact centerline) and its CT."""

    seed: int
    params: AnatomyParams
    airway: Airway
    ct: "CTVolume"  # noqa: F821  (bronchopt_ros.airway.ct.CTVolume)
    timings: dict = field(default_factory=dict)

    @property
    def centerline(self) -> Centerline:
        return self.airway.centerline


# ----------------------------------------------------------------------------- tree growth


@dataclass
class _Seg:
    """A branch while growing (millimetres)."""

    id: int
    parent: int
    generation: int
    points: np.ndarray
    diameter: float
    w: np.ndarray  # unit vector spanning (with the end tangent) this branch's branching plane
    side: int  # +1 right lung, -1 left lung, 0 trachea

    @property
    def end_dir(self) -> np.ndarray:
        d = self.points[-1] - self.points[-2]
        return d / np.linalg.norm(d)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _kitaoka_angle(r: float, n: float) -> float:
    """Branch angle (rad) of the daughter that carries the flow share ``r``."""
    c = (1.0 + r ** (4.0 / n) - (1.0 - r) ** (4.0 / n)) / (2.0 * r ** (2.0 / n))
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def _bent_polyline(p0: np.ndarray, direction: np.ndarray, length: float, bend: np.ndarray,
                   spacing: float) -> np.ndarray:
    """Points ~``spacing`` apart on a quadratic Bezier from ``p0`` of chord ``length``.

    ``bend`` is the sideways offset of the control point (perpendicular to ``direction``)."""
    n = max(2, int(np.ceil(length / spacing)) + 1)
    p2 = p0 + direction * length
    p1 = p0 + direction * (0.5 * length) + bend
    t = np.linspace(0.0, 1.0, 4 * n)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    si = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(si, s, curve[:, k]) for k in range(3)], axis=1)


def _min_clearance(pts: np.ndarray, radius: float, others: list[_Seg], skip: set[int],
                   skip_start_mm: float) -> float:
    """Smallest lumen-to-lumen gap (mm) between a candidate polyline and existing branches,
    ignoring its first ``skip_start_mm`` (where it leaves its parent) and branches in ``skip``."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    q = pts[s > skip_start_mm]
    if len(q) == 0:
        return np.inf
    best = np.inf
    for o in others:
        if o.id in skip:
            continue
        d = np.linalg.norm(q[:, None, :] - o.points[None, :, :], axis=2).min()
        best = min(best, d - radius - o.diameter / 2)
    return best


def _grow(seed: int, p: AnatomyParams) -> list[_Seg]:
    rng = np.random.default_rng(seed)
    n = p.diameter_exponent

    # Trachea: straight, from its open end at the origin down (-z), tilted slightly posterior.
    tilt = np.deg2rad(p.trachea_tilt_deg + rng.normal(0.0, 2.0))
    down = _unit(-SUPERIOR * np.cos(tilt) - ANTERIOR * np.sin(tilt))
    L0 = p.trachea_length_mm * float(np.exp(rng.normal(0.0, p.trachea_length_sd)))
    d0 = p.trachea_diameter_mm * float(np.exp(rng.normal(0.0, p.trachea_diameter_sd)))
    w0 = _unit(np.cross(np.cross(down, RIGHT), down))  # coronal plane, pointing to the right
    trachea = _Seg(0, -1, 0, _bent_polyline(np.zeros(3), down, L0, np.zeros(3), p.point_spacing_mm),
                   d0, w0, 0)
    segs = [trachea]
    frontier = [trachea]
    for gen in range(1, p.generations + 1):
        nxt = []
        for par in frontier:
            nxt += _bifurcate(par, gen, segs, rng, p, n)
        frontier = nxt
        if not frontier:
            break
    return segs


def _bifurcate(par: _Seg, gen: int, segs: list[_Seg], rng: np.random.Generator, p: AnatomyParams,
               n: float) -> list[_Seg]:
    """Grow the two daughters of ``par`` (fewer if they collide or get too thin)."""
    if gen == 1:
        r = float(np.clip(p.carina_split + rng.normal(0.0, 0.02), 0.05, 0.95))
    else:
        r = float(np.clip(rng.beta(p.split_beta, p.split_beta), 0.05, 0.95))
    u = par.end_dir
    terminal = gen == p.generations
    daughters = []
    # Daughter 1 (share r) bends towards +w, daughter 2 towards -w.
    for k, (share, sign) in enumerate(((r, 1.0), (1.0 - r, -1.0))):
        d = par.diameter * share ** (1.0 / n) * float(np.exp(rng.normal(0.0, p.diameter_sd)))
        if d < p.min_diameter_mm:
            continue
        theta = _kitaoka_angle(share, n) + np.deg2rad(rng.normal(0.0, p.angle_sd_deg))
        theta = float(np.clip(theta, np.deg2rad(10.0), np.deg2rad(75.0)))
        ratio = p.terminal_length_ratio if terminal else p.length_ratio
        length = ratio * d * float(np.exp(rng.normal(0.0, p.length_sd)))
        length = max(length, 1.5 * d, 3.0)
        side = par.side if par.side else (1 if sign > 0 else -1)
        jitter = float(rng.normal(0.0, np.deg2rad(p.plane_sd_deg)))
        bend_amp = float(rng.normal(0.0, p.bend))
        flip = 1.0 if rng.random() < 0.5 else -1.0
        placed = None
        # Try the nominal plane first, then turn the parent's branching plane about the parent's
        # axis, then shorten; give up (drop the subtree) if nothing fits.
        for scale in (1.0, 0.75, 0.55):
            for turn in (0.0, 30.0, -30.0, 60.0, -60.0, 90.0, 120.0, -120.0, 180.0):
                w = Rotation.from_rotvec(u * np.deg2rad(turn)).apply(par.w)
                dirn = _unit(np.cos(theta) * u + sign * np.sin(theta) * w)
                nrm = _unit(np.cross(u, w))  # parent's plane normal, perpendicular to dirn
                w_child = Rotation.from_rotvec(dirn * jitter).apply(flip * nrm)
                bend = w_child * bend_amp * length * scale
                pts = _bent_polyline(par.points[-1], dirn, length * scale, bend, p.point_spacing_mm)
                siblings = {s.id for s in daughters}
                gap = _min_clearance(pts, d / 2, segs, {par.id} | siblings,
                                     skip_start_mm=par.diameter / 2 + d / 2)
                # siblings share a start: check them beyond the joint only
                for s in daughters:
                    gap = min(gap, _min_clearance(pts, d / 2, [s], set(), par.diameter / 2 + d))
                if gap >= p.clearance_mm:
                    placed = (pts, w_child)
                    break
            if placed is not None:
                break
        if placed is None:
            continue
        seg = _Seg(len(segs), par.id, gen, placed[0], d, placed[1], side)
        segs.append(seg)
        daughters.append(seg)
    return daughters


def generate_centerline(seed: int, params: AnatomyParams | None = None) -> Centerline:
    """The branch graph of a synthetic airway (metres, CT frame), reproducible per ``seed``."""
    p = params or AnatomyParams()
    segs = _grow(int(seed), p)
    return Centerline([Branch(s.id, s.parent, s.generation, s.points * 1e-3,
                              np.full(len(s.points), s.diameter * 0.5e-3)) for s in segs])


def _trim_to_mask(cl: Centerline, mask: np.ndarray, ct) -> Centerline:
    """Cut every branch where its centerline leaves the segmented lumen (a branch too thin for
    the CT), dropping what lies beyond, so the centerline stays inside the mesh. Branch ids are
    renumbered 0..N-1 in breadth-first order."""
    keep: dict[int, Branch] = {}
    for b in cl.branches:  # parents come before children
        if b.parent >= 0 and (b.parent not in keep or len(keep[b.parent].points) < len(cl.branch(b.parent).points)):
            continue
        ijk = np.round(ct.mm_to_voxel(b.points * 1e3)).astype(int)
        ok = np.all((ijk >= 0) & (ijk < mask.shape), axis=1)
        ok[ok] = mask[tuple(ijk[ok].T)]
        n_in = len(ok) if ok.all() else int(np.argmin(ok))
        if n_in >= 2:
            keep[b.id] = Branch(b.id, b.parent, b.generation, b.points[:n_in], b.radii[:n_in])
    new_id = {old: k for k, old in enumerate(keep)}
    return Centerline([Branch(new_id[b.id], new_id.get(b.parent, -1), b.generation, b.points, b.radii)
                       for b in keep.values()])


def generate_anatomy(seed: int, params: AnatomyParams | None = None,
                     progress: bool = False) -> SyntheticAnatomy:
    """A synthetic patient: centerline -> CT (HU) -> segmentation -> lumen mesh (metres).

    The mesh comes from the CT through :func:`bronchopt_ros.airway.ct.segment_airway` and
    :func:`~bronchopt_ros.airway.ct.mesh_from_mask`, exactly as a user's CT would; its normals
    point out of the lumen. ``airway.centerline`` is the generator's exact centerline.
    """
    from ..airway.ct import mesh_from_mask, segment_airway
    from .ct_synth import synthesize_ct

    p = params or AnatomyParams()
    timings = {}
    t0 = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal t0
        t1 = time.perf_counter()
        timings[name] = t1 - t0
        t0 = t1
        if progress:
            print(f"[anatomy seed {seed}] {name}: {timings[name]:.2f} s", flush=True)

    cl = generate_centerline(seed, p)
    tick("centerline")
    ct = synthesize_ct(cl, p, seed=seed)
    tick("ct")
    root = cl.root
    seed_mm = (root.points[min(5, len(root.points) - 1)] * 1e3)
    mask = segment_airway(ct, seed_mm=seed_mm)
    cl = _trim_to_mask(cl, mask, ct)
    tick("segmentation")
    verts_mm, faces = mesh_from_mask(mask, ct.affine, smooth_iterations=p.smooth_iterations,
                                     max_faces=p.max_faces)
    tick("mesh")
    airway = Airway(verts_mm * 1e-3, faces, cl).check()
    return SyntheticAnatomy(int(seed), replace(p), airway, ct, timings)
