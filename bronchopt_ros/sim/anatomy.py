"""Synthetic bronchial trees after Kitaoka's rules, with a CT and a lumen mesh made from them.

:func:`generate_centerline` grows the branch graph alone; :func:`generate_anatomy` adds a
synthetic CT (:mod:`bronchopt_ros.sim.ct_synth`) and extracts the lumen surface from that CT
through the same path users' NIfTI volumes take (threshold segmentation -> marching cubes,
:mod:`bronchopt_ros.airway.ct`), so the mesh has the look of real data.

The tree follows Kitaoka, Takaki & Suki (J Appl Physiol 1999), simplified:

* a seeded lung model (:class:`LungModel`: two ellipsoids beside the mediastinum, the left one
  smaller and indented by the heart) is filled with random points; every branch owns the points
  of the lung region it supplies (the trachea: all of them);
* the trachea runs down (-z, tilted slightly posterior) from its open end, ~110 mm long and
  ~18 mm wide;
* at a bifurcation a space-dividing plane through the branch's axis splits its region in two;
  the flow split ``r`` is the share of the region's points (bounded to 0.05-0.95); the daughters
  get diameters ``d0 r^(1/n)``, ``d0 (1-r)^(1/n)`` (``n = 2.8``) and branch angles
  ``cos th1 = (1 + r^(4/n) - (1-r)^(4/n)) / (2 r^(2/n))`` (and symmetrically ``th2``), and
  each heads, at that angle, towards the centroid of its sub-region;
* the dividing plane (and so the branching plane) of a daughter is turned ~90 deg from its
  parent's, plus seeded jitter;
* branch length ~3 diameters (terminal branches 3.3), with seeded log-normal variation, but
  at most ``centroid_reach`` of the way to its region's centroid and cut where it would leave
  the lungs; a gentle seeded bend (a quadratic Bezier curve);
* a daughter that would run into an existing branch is re-aimed (turned about its parent's
  axis), then shortened, then dropped with its subtree; growth stops at ``generations``, below
  ``min_diameter_mm`` or when a region has too few points.

Patient-to-patient variation (all from the seed): lung size and position, trachea length, width
and tilt, diameters, angles, lengths, branching planes, bends.

Coordinates: the CT frame is RAS-like (+x the patient's right, +y anterior, +z superior), the
trachea's open end at the origin, millimetres while generating; the returned
:class:`~bronchopt_ros.airway.centerline.Centerline` is in metres, points ~1 mm apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial.transform import Rotation

from ..airway.centerline import Branch, Centerline
from ..airway.mesh import Airway

__all__ = ["AnatomyParams", "LungModel", "SyntheticAnatomy", "generate_anatomy",
           "generate_centerline", "parse_overrides", "overrides_tag", "RIGHT", "SUPERIOR", "ANTERIOR"]

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
    diameter_exponent: float = 2.8  # Kitaoka's n
    length_ratio: float = 3.0  # branch length / diameter
    terminal_length_ratio: float = 3.3
    min_diameter_mm: float = 2.4  # thinner branches are not grown (CT at 0.7 mm would lose them)
    split_beta: float = 6.0  # flow split r ~ Beta(a, a): larger a, more symmetric bifurcations
    lung_points: int = 6000  # samples of the lung volume shared out among the branches
    lung_scale: float = 1.0  # size of the lungs (1: an adult's, ~250 mm high)
    plane_adapt_deg: float = 15.0  # max extra turn of a branching plane towards its region's long side
    centroid_reach: float = 0.5  # a branch ends at most this far towards its region's centroid
    # Patient-to-patient variation (seeded):
    trachea_length_sd: float = 0.07  # relative
    trachea_diameter_sd: float = 0.07  # relative
    lung_size_sd: float = 0.06  # relative, per axis
    length_sd: float = 0.2  # relative (log-normal)
    diameter_sd: float = 0.05  # relative, on top of the flow split
    angle_sd_deg: float = 5.0
    plane_sd_deg: float = 12.0  # jitter of the ~90 deg branching-plane rotation
    bend: float = 0.06  # sd of the mid-branch sideways offset / length
    # Collision handling
    clearance_mm: float = 0.8  # min gap between the lumens of unrelated branches
    point_spacing_mm: float = 1.0
    # Lumen cross-sections (ct_synth.LumenProfile): 0 and 0 give round tubes (the default: every
    # benchmark, validation and training anatomy so far). Real bronchi are mildly elliptic with
    # folds; ellipticity is the sd of (a - b) / (a + b) of the ellipse, lobes the sd of the 3-fold
    # term's relative amplitude (k-fold: lobes / k).
    lumen_ellipticity: float = 0.0
    lumen_lobes: float = 0.0
    # CT synthesis (see bronchopt_ros.sim.ct_synth)
    voxel_mm: float = 0.7
    wall_fraction: float = 0.15  # wall thickness / lumen diameter
    noise_hu: float = 20.0
    blur_voxels: float = 0.5  # Gaussian PSF sigma, voxels
    margin_mm: float = 12.0  # CT margin around the tree
    # Mesh extraction
    smooth_iterations: int = 10  # Taubin smoothing
    max_faces: int | None = 400_000  # decimate above this if a decimator is installed


def parse_overrides(text: str) -> dict:
    """``"key=value,key=value"`` (fields of :class:`AnatomyParams`, e.g.
    ``"trachea_diameter_mm=14,generations=8"``) as a dict of typed values; ``""`` or ``"default"``:
    none. Raises ValueError on an unknown field or a value of the wrong type."""
    text = text.strip()
    if text in ("", "default"):
        return {}
    defaults = AnatomyParams()
    out = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not hasattr(defaults, key):
            raise ValueError(f"anatomy override {item!r}: expected FIELD=VALUE with a field of AnatomyParams")
        kind = int if isinstance(getattr(defaults, key), int) else float
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"anatomy override {item!r}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    return out


def overrides_tag(overrides: dict | None) -> str:
    """A short file-name tag of ``overrides`` ('' for none): the same overrides, the same tag."""
    if not overrides:
        return ""
    import hashlib

    text = ",".join(f"{k}={overrides[k]!r}" for k in sorted(overrides))
    return "_" + hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass
class LungModel:
    """Two lungs in the CT frame (mm): ellipsoids (index 0 right, 1 left), cut medially at
    ``mid_x +- mediastinum_mm`` and, for the left one, indented by the heart (a sphere)."""

    centres: np.ndarray  # (2, 3)
    axes: np.ndarray  # (2, 3) semi-axes
    mid_x: float
    mediastinum_mm: float
    heart_centre: np.ndarray
    heart_radius: float

    def contains(self, x, y, z) -> np.ndarray:
        """Inside either lung; ``x, y, z`` broadcast (e.g. a slab of a voxel grid)."""
        inside = None
        for c, a, sgn in zip(self.centres, self.axes, (1.0, -1.0)):
            e = ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2
            lung = (e <= 1.0) & (sgn * (x - self.mid_x) >= self.mediastinum_mm)
            inside = lung if inside is None else inside | lung
        h = self.heart_centre
        heart = (x - h[0]) ** 2 + (y - h[1]) ** 2 + (z - h[2]) ** 2 <= self.heart_radius ** 2
        return inside & ~heart

    def contains_points(self, pts: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(pts)
        return self.contains(pts[:, 0], pts[:, 1], pts[:, 2])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniformly inside the lungs."""
        lo = (self.centres - self.axes).min(0)
        hi = (self.centres + self.axes).max(0)
        out = []
        while sum(len(o) for o in out) < n:
            q = rng.uniform(lo, hi, size=(2 * n, 3))
            out.append(q[self.contains_points(q)])
        return np.concatenate(out)[:n]


@dataclass
class SyntheticAnatomy:
    """A generated patient: the airway (lumen mesh in metres + exact centerline) and its CT."""

    seed: int
    params: AnatomyParams
    airway: Airway
    ct: "CTVolume"  # noqa: F821  (bronchopt_ros.airway.ct.CTVolume)
    timings: dict = field(default_factory=dict)
    lungs: LungModel | None = None  # millimetres, CT frame

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
    w: np.ndarray  # normal of the plane that will divide this branch's region (perpendicular to its end tangent)
    region: np.ndarray  # lung points this branch supplies

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
    qlo, qhi = q.min(0), q.max(0)
    for o in others:
        if o.id in skip:
            continue
        reach = radius + o.diameter / 2 + 5.0
        if np.any(o.points.min(0) > qhi + reach) or np.any(o.points.max(0) < qlo - reach):
            continue
        d = np.linalg.norm(q[:, None, :] - o.points[None, :, :], axis=2).min()
        best = min(best, d - radius - o.diameter / 2)
    return best


def _make_lungs(carina: np.ndarray, rng: np.random.Generator, p: AnatomyParams) -> LungModel:
    """Seeded lungs around the carina: apex ~90 mm above it, bases ~150 mm below, each lung
    ~120 mm wide and ~170 mm deep; the right one larger, the heart in the left-anterior base."""
    k = p.lung_scale
    size = lambda: np.exp(rng.normal(0.0, p.lung_size_sd, 3))  # noqa: E731
    right = carina + k * np.array([68.0, -8.0, -30.0]) + rng.normal(0.0, 4.0, 3)
    left = carina + k * np.array([-64.0, -10.0, -32.0]) + rng.normal(0.0, 4.0, 3)
    axes = np.stack([k * np.array([64.0, 88.0, 122.0]) * size(),
                     k * np.array([60.0, 85.0, 122.0]) * size()])
    heart = carina + k * np.array([-18.0, 55.0, -105.0]) + rng.normal(0.0, 4.0, 3)
    return LungModel(np.stack([right, left]), axes, float(carina[0]), 14.0 * k, heart,
                     float(62.0 * k * size()[0]))


def _turn_towards(w: np.ndarray, target: np.ndarray, axis: np.ndarray, max_angle: float) -> np.ndarray:
    """``w`` (perpendicular to ``axis``) turned about ``axis`` towards the line of ``target``
    (either sign), by at most ``max_angle``."""
    t = target - (target @ axis) * axis
    if np.linalg.norm(t) < 1e-9:
        return w
    t = _unit(t)
    ang = np.arctan2(np.cross(w, t) @ axis, w @ t)
    ang = (ang + np.pi / 2) % np.pi - np.pi / 2  # a line: the nearest of t, -t
    ang = float(np.clip(ang, -max_angle, max_angle))
    return _unit(Rotation.from_rotvec(axis * ang).apply(w))


def _grow(seed: int, p: AnatomyParams) -> tuple[list[_Seg], LungModel]:
    rng = np.random.default_rng(seed)
    n = p.diameter_exponent

    # Trachea: straight, from its open end at the origin down (-z), tilted slightly posterior.
    tilt = np.deg2rad(p.trachea_tilt_deg + rng.normal(0.0, 2.0))
    down = _unit(-SUPERIOR * np.cos(tilt) - ANTERIOR * np.sin(tilt))
    L0 = p.trachea_length_mm * float(np.exp(rng.normal(0.0, p.trachea_length_sd)))
    d0 = p.trachea_diameter_mm * float(np.exp(rng.normal(0.0, p.trachea_diameter_sd)))
    pts = _bent_polyline(np.zeros(3), down, L0, np.zeros(3), p.point_spacing_mm)
    lungs = _make_lungs(pts[-1], rng, p)
    region = lungs.sample(p.lung_points, rng)
    w0 = _unit(np.cross(np.cross(down, RIGHT), down))  # divides right from left
    trachea = _Seg(0, -1, 0, pts, d0, w0, region)
    segs = [trachea]
    frontier = [trachea]
    for gen in range(1, p.generations + 1):
        nxt = []
        for par in frontier:
            nxt += _bifurcate(par, gen, segs, lungs, rng, p, n)
        frontier = nxt
        if not frontier:
            break
    return segs, lungs


def _bifurcate(par: _Seg, gen: int, segs: list[_Seg], lungs: LungModel, rng: np.random.Generator,
               p: AnatomyParams, n: float) -> list[_Seg]:
    """Grow the daughters of ``par`` (fewer if they collide, get too thin or run out of lung)."""
    min_pts = 4
    u = par.end_dir
    e = par.points[-1]
    if len(par.region) < 2 * min_pts:
        return []
    # Kitaoka's space-dividing plane contains the branch's axis; its normal `w` is the
    # direction the daughters branch to (they and the parent lie in one plane). `par.w` is
    # turned ~90 deg from the plane the branch was born in; it is turned a little further (at
    # most `plane_adapt_deg`) to cut the region across its longest side. The main bronchi
    # branch in the carina's plane instead: the upper lobe bronchus leaves laterally.
    if par.generation == 1:
        lat = RIGHT * np.sign(u @ RIGHT)
        w = _unit(lat - (lat @ u) * u)
    else:
        q = par.region - par.region.mean(0)
        q = q - np.outer(q @ u, u)
        _, evecs = np.linalg.eigh(np.cov(q.T))
        w = _turn_towards(par.w, evecs[:, 2], u, np.deg2rad(p.plane_adapt_deg))
    # Flow split: Kitaoka takes it from the volumes on either side of the plane through the
    # axis; here the plane is shifted along `w` to split the region at a seeded share
    # r ~ Beta(split_beta, split_beta), so that branches keep supplying comparable regions.
    # The carina's split is that of the lungs' volumes (right larger).
    proj = (par.region - e) @ w
    if par.parent < 0:
        side = proj > 0
        r = float(np.clip(side.mean(), 0.05, 0.95))
    else:
        r = float(np.clip(rng.beta(p.split_beta, p.split_beta), 0.05, 0.95))
        side = proj > np.quantile(proj, 1.0 - r)
    terminal = gen == p.generations
    daughters = []
    for sub, share, sign in ((par.region[side], r, 1.0), (par.region[~side], 1.0 - r, -1.0)):
        if len(sub) < min_pts:
            continue
        d = par.diameter * share ** (1.0 / n) * float(np.exp(rng.normal(0.0, p.diameter_sd)))
        theta = _kitaoka_angle(share, n) + np.deg2rad(rng.normal(0.0, p.angle_sd_deg))
        theta = float(np.clip(theta, np.deg2rad(10.0), np.deg2rad(75.0)))
        ratio = p.terminal_length_ratio if terminal else p.length_ratio
        length = max(ratio * d * float(np.exp(rng.normal(0.0, p.length_sd))), 1.5 * d, 3.0)
        jitter = float(rng.normal(0.0, np.deg2rad(p.plane_sd_deg)))
        bend_amp = float(rng.normal(0.0, p.bend))
        if d < p.min_diameter_mm:
            continue
        # Daughters branch in the plane of u and w; a branch does not overshoot the centroid of
        # the region it supplies (Kitaoka: it stays within its region).
        to_c = sub.mean(0) - e
        length = max(min(length, p.centroid_reach * float(np.linalg.norm(to_c))), 1.5 * d)
        v = sign * w
        placed = None
        # Try the nominal direction, then turn it about the parent's axis, then shorten; give up
        # (drop the subtree) if nothing fits.
        for scale in (1.0, 0.75, 0.55):
            for turn in (0.0, 20.0, -20.0, 40.0, -40.0, 60.0, -60.0, 90.0, -90.0):
                vt = Rotation.from_rotvec(u * np.deg2rad(turn)).apply(v)
                dirn = _unit(np.cos(theta) * u + np.sin(theta) * vt)
                L = length * scale
                if gen >= 2:  # bronchi beyond the main ones end inside the lungs
                    ts = np.arange(1.0, L + 1e-9, 1.0)
                    inside = lungs.contains_points(e + ts[:, None] * dirn)
                    if inside.any():
                        k0 = int(np.argmax(inside))
                        if not inside[k0:].all():  # cut where it leaves them again
                            L = float(ts[k0 + int(np.argmin(inside[k0:]))]) - 1.0
                    elif gen > 2:
                        continue
                    if L < max(1.5 * d, 3.0):
                        continue
                # Kitaoka's 90-degree rule: this daughter's region is divided by a plane that
                # contains its axis and the normal of the plane it was born in.
                nrm = _unit(np.cross(u, vt))
                w_child = Rotation.from_rotvec(dirn * jitter).apply(nrm)
                bend = w_child * bend_amp * L
                pts = _bent_polyline(e, dirn, L, bend, p.point_spacing_mm)
                gap = _min_clearance(pts, d / 2, segs, {par.id} | {s.id for s in daughters},
                                     skip_start_mm=par.diameter / 2 + d / 2)
                for s in daughters:  # siblings share their start: check beyond the joint only
                    gap = min(gap, _min_clearance(pts, d / 2, [s], set(), par.diameter / 2 + d))
                if gap >= p.clearance_mm:
                    placed = (pts, w_child)
                    break
            if placed is not None:
                break
        if placed is None:
            continue
        seg = _Seg(len(segs), par.id, gen, placed[0], d, placed[1], sub)
        segs.append(seg)
        daughters.append(seg)
    return daughters


def generate_centerline(seed: int, params: AnatomyParams | None = None) -> Centerline:
    """The branch graph of a synthetic airway (metres, CT frame), reproducible per ``seed``."""
    return _to_centerline(_grow(int(seed), params or AnatomyParams())[0])


def _to_centerline(segs: list[_Seg]) -> Centerline:
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

    segs, lungs = _grow(int(seed), p)
    cl = _to_centerline(segs)
    tick("centerline")
    ct = synthesize_ct(cl, p, seed=seed, lungs=lungs)
    tick("ct")
    root = cl.root
    seed_mm = (root.points[min(5, len(root.points) - 1)] * 1e3)
    mask = segment_airway(ct, seed_mm=seed_mm)
    cl = _trim_to_mask(cl, mask, ct)
    tick("segmentation")
    verts_mm, faces = mesh_from_mask(mask, ct.affine, smooth_iterations=p.smooth_iterations,
                                     max_faces=p.max_faces, intensity=ct.hu)
    tick("mesh")
    airway = Airway(verts_mm * 1e-3, faces, cl).check()
    return SyntheticAnatomy(int(seed), replace(p), airway, ct, timings, lungs)
