"""Scope trajectories through the airway: recorded procedures and random poses in the lumen.

:func:`plan_procedure` makes what a bronchoscopist does in a short recording: the scope enters
from the upper trachea and advances along the centerline path into a target segment, with
pauses, short retractions, roll, wobble of the tip and off-centre positions; everything smooth
(monotone cubic progress curve, Gaussian-filtered noise, parallel-transported frames).
:func:`sample_lumen_pose` / :class:`LumenSampler` draw independent poses in the lumen looking
roughly along the branch (encoder training data).

Every camera centre returned is strictly inside the lumen: inside the mesh (ray parity,
:meth:`Raycaster.contains`), within ``radius - margin`` of the centerline, and at least
``margin / 2`` from the mesh wall (ray-cast distance). Poses are camera -> CT, metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ..airway.centerline import Centerline
from ..geometry import Pose

if TYPE_CHECKING:  # pragma: no cover
    from ..airway.mesh import Airway
    from ..render.raycast import Raycaster

__all__ = ["TrajectoryParams", "Trajectory", "TrajectoryError", "CenterlineIndex", "LumenSampler", "spread_targets",
           "LumenPoseParams", "plan_procedure", "sample_lumen_pose", "sample_lumen_poses",
           "wall_distance", "lumen_margin", "inside_lumen"]


class TrajectoryError(RuntimeError):
    """No trajectory satisfying the constraints could be made (e.g. a lumen too thin)."""


# =========================================================================== centerline index
class CenterlineIndex:
    """The centerline resampled densely (``step`` metres) with a KD-tree.

    Per sample: point, radius, branch id, generation, tangent and arc length from the trachea's
    open end (continuous over the whole tree: a branch starts where its parent ends).
    """

    def __init__(self, centerline: Centerline, step: float = 0.25e-3):
        pts, rad, bid, gen, arc, tan = [], [], [], [], [], []
        start_arc: dict[int, float] = {}
        for b in _topological(centerline):
            s0 = 0.0 if b.parent < 0 else start_arc[b.parent] + centerline.branch(b.parent).length
            start_arc[b.id] = s0
            p, r, s = _resample(b.points, b.radii, step)
            t = np.gradient(p, axis=0)
            t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
            pts.append(p), rad.append(r), arc.append(s0 + s), tan.append(t)
            bid.append(np.full(len(p), b.id)), gen.append(np.full(len(p), b.generation))
        self.centerline = centerline
        self.points = np.concatenate(pts)
        self.radii = np.concatenate(rad)
        self.branch = np.concatenate(bid)
        self.generation = np.concatenate(gen)
        self.arclen = np.concatenate(arc)
        self.tangent = np.concatenate(tan)
        self.start_arclen = start_arc
        self.tree = cKDTree(self.points)
        self._kmax = int(min(32, len(self.points)))

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, sample index) of the nearest centerline sample for points (..., 3)."""
        d, i = self.tree.query(np.asarray(x, dtype=np.float64).reshape(-1, 3))
        shape = np.shape(x)[:-1]
        return d.reshape(shape), i.reshape(shape)

    def clearance(self, x: np.ndarray) -> np.ndarray:
        """``max_i (r_i - |x - p_i|)`` over nearby samples: > m where ``x`` lies within
        ``radius - m`` of the centerline (metres; negative outside the tube model)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, 3)
        d, i = self.tree.query(x, k=self._kmax)
        d, i = d.reshape(len(x), -1), i.reshape(len(x), -1)
        i = np.minimum(i, len(self.points) - 1)
        return np.max(np.where(np.isfinite(d), self.radii[i] - d, -np.inf), axis=1)

    def local_radius(self, x: np.ndarray) -> np.ndarray:
        """Radius of the nearest centerline sample."""
        return self.radii[self.nearest(x)[1]]


def _topological(cl: Centerline):
    done, out, todo = set(), [], list(cl.branches)
    while todo:
        rest = []
        for b in todo:
            if b.parent < 0 or b.parent in done:
                out.append(b)
                done.add(b.id)
            else:
                rest.append(b)
        if len(rest) == len(todo):  # orphans: treat as roots
            out += rest
            break
        todo = rest
    return out


def _resample(points: np.ndarray, radii: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polyline resampled every ``step`` (arc length); returns (points, radii, arc length)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    keep = np.concatenate([[True], seg > 1e-12])
    s, points, radii = s[keep], points[keep], radii[keep]
    if s[-1] <= 0:
        return points[:1].repeat(2, 0), radii[:1].repeat(2), np.array([0.0, 0.0])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    q = np.linspace(0.0, s[-1], n)
    P = np.stack([np.interp(q, s, points[:, k]) for k in range(3)], 1)
    return P, np.interp(q, s, radii), q


# =========================================================================== lumen checks
def lumen_margin(radius: np.ndarray | float, margin: float = 1.0e-3, margin_frac: float = 0.4) -> np.ndarray:
    """Required clearance from the wall at a lumen of ``radius``: ``min(margin, margin_frac*r)``."""
    return np.minimum(margin, margin_frac * np.asarray(radius, dtype=np.float64))


def _fibonacci_dirs(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)


def wall_distance(raycaster: "Raycaster", points: np.ndarray, n_dirs: int = 64) -> np.ndarray:
    """Distance from each point to the mesh along the nearest of ``n_dirs`` directions (an upper
    bound on the true distance, within ~3 % for a locally flat wall); inf where nothing is hit."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    dirs = _fibonacci_dirs(n_dirs)
    o = np.repeat(points, n_dirs, axis=0)
    d = np.tile(dirs, (len(points), 1))
    tri, t = raycaster.cast_rays(o, d)
    t = np.where(tri >= 0, t, np.inf).reshape(len(points), n_dirs)
    return t.min(axis=1)


def inside_lumen(points: np.ndarray, index: CenterlineIndex, raycaster: "Raycaster | None" = None,
                 margin: float = 1.0e-3, margin_frac: float = 0.4, min_clearance: float = 0.0) -> np.ndarray:
    """True where a point is strictly inside the lumen with the margin: within
    ``radius - lumen_margin(radius)`` of the centerline and, given a ray caster, inside the mesh
    and at least half the margin from its wall; and at least ``min_clearance`` inside the
    centerline's radius and from the mesh wall (:meth:`TrajectoryParams.scope_clearance`)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    m = lumen_margin(index.local_radius(points), margin, margin_frac)
    ok = index.clearance(points) > np.maximum(m, min_clearance)
    if raycaster is not None and ok.any():
        idx = np.flatnonzero(ok)
        wall = np.maximum(0.5 * m[idx], min_clearance)
        inside = raycaster.contains(points[idx]) & (wall_distance(raycaster, points[idx]) > wall)
        ok[idx] = inside
    return ok


# =========================================================================== procedures
@dataclass
class TrajectoryParams:
    """How the scope moves in a recorded procedure (metres, seconds, radians)."""

    start_depth: float = 0.02  # where the recording starts, below the trachea's open end
    start_depth_frac: float = 0.25  # ... at most this share of the trachea's length
    end_clearance: float = 3e-3  # stop this far (or 1.5 radii) before the target branch's end
    min_target_radius: float = 1.0e-3  # targets need a path this wide everywhere
    min_target_generation: int = 3  # prefer targets at least this deep (if reachable)
    speed: tuple[float, float] = (5e-3, 12e-3)  # insertion speed range, m/s
    max_speed: float = 25e-3  # time scaling never makes the mean speed faster than this
    reach_speed: float = 13e-3  # a recording of T seconds targets branches within T * this
    chunk: tuple[float, float] = (4e-3, 15e-3)  # advance this far between events
    p_pause: float = 0.35
    pause_s: tuple[float, float] = (0.3, 1.5)
    p_retract: float = 0.2
    retract: tuple[float, float] = (2e-3, 8e-3)
    roll_amplitude: float = 0.6  # rad, slow roll about the view axis (plus a random start roll)
    roll_timescale_s: float = 2.0
    wobble_amplitude: float = 0.08  # rad, tilt of the view off the path
    wobble_timescale_s: float = 0.6
    tremor_amplitude: float = 0.01  # rad, fast small tilt
    tremor_timescale_s: float = 0.08
    offcentre: float = 0.6  # largest share of (radius - margin) the centre may leave the axis
    offcentre_timescale_s: float = 1.2
    look_ahead: float = 6e-3  # view direction aims this far ahead (or 2 radii) on the path
    path_smoothing: float = 2e-3  # Gaussian smoothing of the centerline path, metres
    margin: float = 1.0e-3  # wall clearance: min(margin, margin_frac * radius)
    margin_frac: float = 0.4
    # The scope's outer diameter (m); 0: a point camera, as in every case before session 31 (the
    # benchmark's too). Given, the tip's centre keeps its radius from the wall, the procedure only
    # enters bronchi the scope fits in (a path at least its radius + scope_slack wide all the way),
    # and write_case keeps the light guide inside the tip (the appearance's light offset at most
    # the radius less light_guide_radius). A point camera goes where no scope can: in the LIDC487
    # segmentation's 2-2.6 mm bronchi its light guide, 1.2 mm off the lens, came within 0.2 mm of
    # the wall or through it, and rendered views no endoscope can film.
    scope_diameter: float = 0.0
    scope_slack: float = 0.1e-3
    light_guide_radius: float = 0.3e-3
    # The tip may press into the wall by this share of its radius (a bronchial wall gives a little,
    # and a segmentation's wall is rough: at 0.1 a 2.8 mm scope found no path through LIDC487).
    scope_press: float = 0.2

    def clearance(self, radius: np.ndarray | float) -> np.ndarray:
        """The wall clearance the camera's centre is planned with in a lumen of ``radius``."""
        m = lumen_margin(radius, self.margin, self.margin_frac)
        return np.maximum(m, 0.5 * self.scope_diameter) if self.scope_diameter > 0 else m

    @property
    def scope_clearance(self) -> float:
        """The least distance from the centre to the wall a scope's tip is held to (0: no scope)."""
        return (1.0 - self.scope_press) * 0.5 * self.scope_diameter

    @property
    def target_radius(self) -> float:
        """The narrowest lumen radius a procedure's path may pass."""
        if self.scope_diameter > 0:
            return max(self.min_target_radius, 0.5 * self.scope_diameter + self.scope_slack)
        return self.min_target_radius

    @property
    def max_light_offset(self) -> float:
        """The largest light guide offset from the lens the scope has room for (inf: no scope)."""
        return max(0.5 * self.scope_diameter - self.light_guide_radius, 0.0) if self.scope_diameter > 0 else math.inf


@dataclass
class Trajectory:
    """A recorded procedure: stamps (seconds from the start) and camera -> CT poses, plus where
    along the path each frame is (``progress`` metres of arc length, ``branch`` the nearest
    centerline branch id)."""

    stamps_s: np.ndarray
    poses: list[Pose]
    progress: np.ndarray = field(default_factory=lambda: np.zeros(0))
    branch: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    target_leaf: int = -1
    path_branches: list[int] = field(default_factory=list)
    reached_target: bool = True
    fps: float = 30.0

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def centres(self) -> np.ndarray:
        return np.array([p.t for p in self.poses]).reshape(-1, 3)

    def to_dict(self) -> dict:
        return {"frames": len(self), "fps": self.fps, "target_leaf": int(self.target_leaf),
                "path_branches": [int(b) for b in self.path_branches], "reached_target": bool(self.reached_target),
                "duration_s": float(self.stamps_s[-1] - self.stamps_s[0]) if len(self) else 0.0,
                "path_length_m": float(np.ptp(self.progress)) if len(self.progress) else 0.0}


def smooth_noise(rng: np.random.Generator, n: int, dims: int, timescale_frames: float) -> np.ndarray:
    """Gaussian-filtered white noise (n, dims) rescaled to unit standard deviation."""
    sigma = max(float(timescale_frames), 0.5)
    pad = int(4 * sigma) + 1
    w = rng.standard_normal((n + 2 * pad, dims))
    f = gaussian_filter1d(w, sigma, axis=0, mode="wrap")[pad:pad + n]
    return f / max(float(f.std()), 1e-9) if n > 1 else f


def _wide_branches(cl: Centerline, p: TrajectoryParams) -> list:
    """Branches (not the trachea) whose whole path is at least ``p.target_radius`` wide (all
    non-root branches when none is and no scope is given)."""
    wide = [b for b in cl.branches if b.parent >= 0 and cl.path_to(b.id)[1].min() >= p.target_radius]
    if wide or p.scope_diameter > 0:
        return wide
    return [b for b in cl.branches if b.parent >= 0] or list(cl.branches)


def _path_needed(cl: Centerline, b, p: TrajectoryParams, s0: float) -> float:
    """Metres of insertion from the start ``s0`` to the stop before the end of branch ``b``."""
    return sum(x.length for x in cl.lineage(b.id)) - s0 - max(p.end_clearance, 1.5 * b.radii[-1])


def _choose_target(cl: Centerline, rng: np.random.Generator, p: TrajectoryParams, s0: float,
                   budget: float | None) -> int:
    """A target branch: a deep leaf (wide enough all the way) when time allows; with a length
    ``budget`` (metres of path a short recording can cover) the deepest branches within reach."""
    wide = _wide_branches(cl, p)
    if not wide:
        raise TrajectoryError(f"a {1e3 * p.scope_diameter:.1f} mm scope fits in no bronchus of this airway")
    if budget is not None:
        need = {b.id: _path_needed(cl, b, p, s0) for b in wide}
        reach = [b for b in wide if need[b.id] <= budget]
        if reach:
            top = max(b.generation for b in reach)
            pool = [b for b in reach if b.generation >= max(1, top - 1)]
            return int(pool[rng.integers(len(pool))].id)
        return int(min(wide, key=lambda b: need[b.id]).id)
    leaves = {b.id for b in cl.leaves()}
    ok = [b for b in wide if b.id in leaves]
    deep = [b for b in ok if b.generation >= p.min_target_generation]
    pool = deep or ok or wide
    return int(pool[rng.integers(len(pool))].id)


def spread_targets(cl: Centerline, n: int, duration_s: float, params: TrajectoryParams | None = None) -> list[int]:
    """``n`` target branches spread over the tree, for procedures of ``duration_s`` seconds: the
    deepest wide-enough branch within reach (as :func:`plan_procedure` draws them) under each
    generation-2 branch in turn (each lobar bronchus; generation 1 where the tree has no deeper
    level; a shallower leaf is its own group), so that the procedures do not all go down the one
    deepest path. A real tree's deepest reachable branches often lie in one lobe, and
    :func:`plan_procedure`'s own draw then repeats that path."""
    p = params or TrajectoryParams()
    s0 = min(p.start_depth, p.start_depth_frac * cl.root.length)
    budget = p.reach_speed * duration_s
    reach = [b for b in _wide_branches(cl, p) if _path_needed(cl, b, p, s0) <= budget]
    if not reach:
        raise TrajectoryError(f"no branch within reach of a {duration_s:.1f} s procedure")
    level = 2 if any(b.generation >= 2 for b in reach) else 1
    groups: dict[int, list] = {}
    for b in (b for b in reach if b.generation >= level or not cl.children(b.id)):
        anc = next((x.id for x in cl.lineage(b.id) if x.generation == level), b.id)
        groups.setdefault(anc, []).append(b)
    picks = [max(g, key=lambda b: (b.generation, -b.id)).id for _, g in sorted(groups.items())]
    return [int(picks[k % len(picks)]) for k in range(n)]


def _progress_profile(rng: np.random.Generator, s0: float, s1: float, p: TrajectoryParams) -> tuple[np.ndarray, np.ndarray]:
    """Knots (t, s) of the insertion: advance chunks with pauses and retractions."""
    t, s = [0.0], [s0]
    while s[-1] < s1 - 1e-6:
        v = rng.uniform(*p.speed)
        ds = min(rng.uniform(*p.chunk), s1 - s[-1])
        t.append(t[-1] + ds / v), s.append(s[-1] + ds)
        if s[-1] >= s1 - 1e-6:
            break
        if rng.random() < p.p_pause:
            t.append(t[-1] + rng.uniform(*p.pause_s)), s.append(s[-1])
        if rng.random() < p.p_retract:
            back = min(rng.uniform(*p.retract), s[-1] - s0)
            if back > 1e-4:
                t.append(t[-1] + back / (0.8 * v)), s.append(s[-1] - back)
                t.append(t[-1] + rng.uniform(0.2, 0.6)), s.append(s[-1])
                t.append(t[-1] + back / v), s.append(s[-1] + back)
    t.append(t[-1] + rng.uniform(*p.pause_s)), s.append(s[-1])  # settle at the target
    return np.array(t), np.array(s)


class _Path:
    """A smoothed centerline path with arc length, radius and a parallel-transported frame."""

    def __init__(self, cl: Centerline, leaf: int, smoothing: float, step: float = 0.5e-3):
        pts, rad = cl.path_to(leaf)
        P, R, s = _resample(pts, rad, step)
        sig = smoothing / step
        if sig > 0 and len(P) > 3:
            P = gaussian_filter1d(P, sig, axis=0, mode="nearest")
            R = gaussian_filter1d(R, sig, mode="nearest")
        seg = np.linalg.norm(np.diff(P, axis=0), axis=1)
        self.s = np.concatenate([[0.0], np.cumsum(seg)])
        self.P, self.R, self.step = P, R, step
        T = np.gradient(P, self.s, axis=0)
        self.T = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)
        self.length = float(self.s[-1])

    def at(self, s: np.ndarray, arr: np.ndarray) -> np.ndarray:
        s = np.clip(s, 0.0, self.length)
        if arr.ndim == 1:
            return np.interp(s, self.s, arr)
        return np.stack([np.interp(s, self.s, arr[:, k]) for k in range(arr.shape[1])], -1)

    def view_dirs(self, look_ahead: float) -> np.ndarray:
        """Unit view direction at every path sample: towards the point ``look_ahead`` ahead
        (at least 2 radii), blended into the tangent at the path's end."""
        ahead = np.maximum(look_ahead, 2.0 * self.R)
        tgt = self.at(self.s + ahead, self.P)
        d = tgt - self.P
        n = np.linalg.norm(d, axis=1, keepdims=True)
        d = np.where(n > 1e-6, d / np.maximum(n, 1e-12), self.T)
        d = gaussian_filter1d(d, 2.0, axis=0, mode="nearest")
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    @staticmethod
    def transport(dirs: np.ndarray, up0: np.ndarray) -> np.ndarray:
        """Rotation-minimising frames: (N, 3, 3) columns x, y, z with z = dirs."""
        N = len(dirs)
        F = np.empty((N, 3, 3))
        z = dirs[0]
        x = up0 - z * (up0 @ z)
        if np.linalg.norm(x) < 1e-6:
            x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
        x /= np.linalg.norm(x)
        F[0] = np.stack([x, np.cross(z, x), z], 1)
        for i in range(1, N):
            z1 = dirs[i]
            x = F[i - 1][:, 0]
            x = x - z1 * (x @ z1)
            x /= max(np.linalg.norm(x), 1e-12)
            F[i] = np.stack([x, np.cross(z1, x), z1], 1)
        return F


def plan_procedure(airway: "Airway | Centerline", rng: np.random.Generator, target_leaf: int | None = None,
                   fps: float = 30.0, n_frames: int | None = None, duration_s: float | None = None,
                   params: TrajectoryParams | None = None, raycaster: "Raycaster | None" = None,
                   check_mesh: bool = True) -> Trajectory:
    """Plan a procedure: insertion from the upper trachea to the end of branch ``target_leaf``
    (when None: drawn among the deepest wide-enough branches a recording of this length reaches
    at ``params.reach_speed``, or among the deep leaves when the length is open).

    Length: ``n_frames`` frames, or ``duration_s`` seconds, at ``fps``; by default as long as the
    drawn insertion takes. The insertion is time-scaled to fit (never faster than
    ``params.max_speed`` on average: a short recording may stop before the target,
    ``reached_target`` says). Given an :class:`Airway` (with centerline) the centres are also
    checked against the mesh (``check_mesh``); offsets that would leave the lumen are shrunk.
    Raises :class:`TrajectoryError` when even the smoothed path itself is not inside.
    """
    p = params or TrajectoryParams()
    cl = airway if isinstance(airway, Centerline) else airway.centerline
    if cl is None:
        raise ValueError("plan_procedure needs a centerline (airway.centerline is None)")
    if raycaster is None and check_mesh and not isinstance(airway, Centerline):
        from ..render.raycast import Raycaster

        raycaster = Raycaster(airway.vertices, airway.faces)
    if not check_mesh:
        raycaster = None
    index = CenterlineIndex(cl)
    root_len = cl.root.length
    s0 = min(p.start_depth, p.start_depth_frac * root_len)
    if target_leaf is None:
        T_req = (n_frames - 1) / fps if n_frames is not None else duration_s
        budget = None if T_req is None else p.reach_speed * T_req
        leaf = _choose_target(cl, rng, p, s0, budget)
    else:
        leaf = int(target_leaf)
    path = _Path(cl, leaf, p.path_smoothing)
    s1 = max(s0 + 1e-3, path.length - max(p.end_clearance, 1.5 * float(path.R[-1])))

    # --- progress s(t): knots -> monotone cubic -> time scaling to the requested length
    tk, sk = _progress_profile(rng, s0, s1, p)
    T_nat = float(tk[-1])
    if n_frames is None:
        n_frames = int(round((duration_s if duration_s is not None else T_nat) * fps)) + 1
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError("plan_procedure: n_frames must be >= 1")
    T = max((n_frames - 1) / fps, 1e-9)
    travel = float(np.abs(np.diff(sk)).sum())
    scale = T / T_nat  # > 1 slows the whole insertion down
    scale = max(scale, travel / (p.max_speed * T_nat)) if travel > 0 else scale
    prog = PchipInterpolator(tk * scale, sk, extrapolate=False)
    t = np.arange(n_frames) / fps
    s = prog(np.minimum(t, tk[-1] * scale))
    s = np.where(np.isfinite(s), s, sk[-1])
    reached = bool(s.max() >= s1 - 1e-4)

    # --- orientation: transported frame along the path's view directions, roll, wobble
    dirs = path.view_dirs(p.look_ahead)
    F = _Path.transport(dirs, up0=np.array([0.0, 1.0, 0.0]))
    # frames at the per-frame progress: F is smooth along s; interpolate its columns and
    # re-orthonormalise
    Fs = np.stack([path.at(s, F[:, :, k]) for k in range(3)], -1)
    Fs = Rotation.from_matrix(Fs).as_matrix()
    tsf = lambda sec: sec * fps  # noqa: E731  seconds -> frames
    roll = rng.uniform(-np.pi, np.pi) + p.roll_amplitude * smooth_noise(rng, n_frames, 1, tsf(p.roll_timescale_s))[:, 0]
    wob = p.wobble_amplitude * smooth_noise(rng, n_frames, 2, tsf(p.wobble_timescale_s))
    wob += p.tremor_amplitude * smooth_noise(rng, n_frames, 2, tsf(p.tremor_timescale_s))
    rot_local = Rotation.from_rotvec(np.stack([np.zeros(n_frames), np.zeros(n_frames), roll], 1)) * \
        Rotation.from_rotvec(np.stack([wob[:, 0], wob[:, 1], np.zeros(n_frames)], 1))
    R = (Rotation.from_matrix(Fs) * rot_local).as_matrix()

    # --- centre: smoothed path + off-centre offset in the path's normal plane
    base = path.at(s, path.P)
    radius = path.at(s, path.R)
    margin = p.clearance(radius)
    n2 = smooth_noise(rng, n_frames, 2, tsf(p.offcentre_timescale_s))
    mag = np.linalg.norm(n2, axis=1, keepdims=True)
    n2 = n2 * (np.tanh(mag) / np.maximum(mag, 1e-9))
    room = np.maximum(radius - margin, 0.0)[:, None] * p.offcentre
    offset = (Fs[:, :, 0] * n2[:, :1] + Fs[:, :, 1] * n2[:, 1:]) * room

    # --- keep every centre inside: shrink the offset where needed (smoothly)
    shrink = np.ones(n_frames)
    for _ in range(12):
        c = base + offset * shrink[:, None]
        ok = inside_lumen(c, index, raycaster, p.margin, p.margin_frac, p.scope_clearance)
        if ok.all():
            break
        bad = ~ok
        if np.all(shrink[bad] < 1e-3):
            raise TrajectoryError(f"path to leaf {leaf} leaves the lumen at {int(bad.sum())} frames even on its axis")
        f = shrink.copy()
        f[bad] *= 0.5
        f[bad & (f < 0.02)] = 0.0
        # spread the reduction to neighbours so the motion stays smooth
        from scipy.ndimage import minimum_filter1d

        k = max(3, int(0.3 * fps) | 1)
        shrink = np.minimum(shrink, gaussian_filter1d(minimum_filter1d(f, k, mode="nearest"), k / 4, mode="nearest"))
        shrink[bad] = np.minimum(shrink[bad], f[bad])
    else:
        c = base + offset * shrink[:, None]
        ok = inside_lumen(c, index, raycaster, p.margin, p.margin_frac, p.scope_clearance)
        if not ok.all():
            raise TrajectoryError(f"could not keep {int((~ok).sum())} frames inside the lumen (leaf {leaf})")
    centres = base + offset * shrink[:, None]

    poses = [Pose(R[i], centres[i]) for i in range(n_frames)]
    _, nidx = index.nearest(centres)
    return Trajectory(stamps_s=t, poses=poses, progress=s, branch=index.branch[nidx].astype(np.int64),
                      target_leaf=leaf, path_branches=[b.id for b in cl.lineage(leaf)],
                      reached_target=reached, fps=float(fps))


# =========================================================================== random lumen poses
@dataclass
class LumenPoseParams:
    """Random poses in the lumen (encoder training)."""

    offcentre: float = 0.8  # share of (radius - margin), uniform over the disc
    tilt_max: float = 0.45  # rad, view tilt off the branch direction (uniform in angle)
    p_backward: float = 0.1  # look back up the branch this often
    roll: bool = True  # uniform roll in [-pi, pi); else the transported frame's roll
    branch_weighting: str = "length"  # "length" | "uniform" | "generation" (deep branches less often)
    skip_trachea_top: float = 0.015  # never sample the top of the trachea (metres)
    end_clearance: float = 1.5  # radii kept clear of a leaf's end
    margin: float = 1.0e-3
    margin_frac: float = 0.4


class LumenSampler:
    """Draws random camera poses inside an airway's lumen (cached indexes)."""

    def __init__(self, airway: "Airway", params: LumenPoseParams | None = None, raycaster: "Raycaster | None" = None):
        if airway.centerline is None:
            raise ValueError("LumenSampler needs an airway with a centerline")
        from ..render.raycast import Raycaster

        self.airway = airway
        self.params = params or LumenPoseParams()
        self.index = CenterlineIndex(airway.centerline)
        self.raycaster = raycaster or Raycaster(airway.vertices, airway.faces)
        cl = airway.centerline
        leaves = {b.id for b in cl.leaves()}
        self._branches = cl.branches
        lengths = np.array([b.length for b in cl.branches])
        w = {"length": lengths, "uniform": np.ones(len(lengths)),
             "generation": lengths / (1.0 + np.array([b.generation for b in cl.branches]))}[self.params.branch_weighting]
        self._w = w / w.sum()
        self._is_leaf = np.array([b.id in leaves for b in cl.branches])

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        bi = rng.choice(len(self._branches), size=n, p=self._w)
        C, R = np.empty((n, 3)), np.empty((n, 3, 3))
        for k, b_idx in enumerate(bi):
            b = self._branches[b_idx]
            pts, rad, s = _resample(b.points, b.radii, 0.25e-3)
            lo = p.skip_trachea_top if b.parent < 0 else 0.0
            hi = s[-1] - (p.end_clearance * rad[-1] if self._is_leaf[b_idx] else 0.0)
            if hi <= lo:
                lo, hi = 0.0, s[-1]
            q = rng.uniform(lo, hi)
            c = np.array([np.interp(q, s, pts[:, j]) for j in range(3)])
            r = float(np.interp(q, s, rad))
            ahead = np.array([np.interp(min(q + max(2 * r, 3e-3), s[-1]), s, pts[:, j]) for j in range(3)])
            behind = np.array([np.interp(max(q - max(2 * r, 3e-3), 0.0), s, pts[:, j]) for j in range(3)])
            z = ahead - behind
            z /= np.linalg.norm(z)
            if rng.random() < p.p_backward:
                z = -z
            F = _Path.transport(z[None], up0=rng.standard_normal(3))[0]
            m = float(lumen_margin(r, p.margin, p.margin_frac))
            rr = max(r - m, 0.0) * p.offcentre * np.sqrt(rng.random())
            a = rng.uniform(0, 2 * np.pi)
            C[k] = c + rr * (np.cos(a) * F[:, 0] + np.sin(a) * F[:, 1])
            tilt = rng.uniform(0.0, p.tilt_max)
            az = rng.uniform(0, 2 * np.pi)
            roll = rng.uniform(-np.pi, np.pi) if p.roll else 0.0
            R[k] = F @ Rotation.from_rotvec([0, 0, roll]).as_matrix() @ \
                Rotation.from_rotvec([tilt * np.cos(az), tilt * np.sin(az), 0.0]).as_matrix()
        return C, R

    def sample(self, rng: np.random.Generator, n: int = 1, max_rounds: int = 50) -> list[Pose]:
        """``n`` poses, each strictly inside the lumen (see the module docstring)."""
        p = self.params
        out_c, out_r = [], []
        need = n
        for _ in range(max_rounds):
            C, R = self._draw(rng, int(need * 1.3) + 2)
            ok = inside_lumen(C, self.index, self.raycaster, p.margin, p.margin_frac)
            out_c.append(C[ok]), out_r.append(R[ok])
            need -= int(ok.sum())
            if need <= 0:
                break
        C, R = np.concatenate(out_c)[:n], np.concatenate(out_r)[:n]
        if len(C) < n:
            raise TrajectoryError(f"only {len(C)} of {n} random poses landed inside the lumen")
        return [Pose(R[i], C[i]) for i in range(n)]


_SAMPLERS: dict[int, LumenSampler] = {}


def sample_lumen_poses(airway: "Airway", rng: np.random.Generator, n: int,
                       params: LumenPoseParams | None = None) -> list[Pose]:
    """``n`` random poses in the lumen looking roughly along the branch (see
    :class:`LumenPoseParams`); the sampler for ``airway`` is cached."""
    key = id(airway)
    s = _SAMPLERS.get(key)
    if s is None or s.airway is not airway or (params is not None and s.params != params):
        if len(_SAMPLERS) > 4:
            _SAMPLERS.clear()
        s = _SAMPLERS[key] = LumenSampler(airway, params)
    return s.sample(rng, n)


def sample_lumen_pose(airway: "Airway", rng: np.random.Generator, params: LumenPoseParams | None = None) -> Pose:
    """One random pose in the lumen (see :func:`sample_lumen_poses`)."""
    return sample_lumen_poses(airway, rng, 1, params)[0]
