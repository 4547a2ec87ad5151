"""Frame-wise 2D-3D registration: move a pose until the airway rendered there agrees with the frame.

Two objectives, both driven by the same renderer (:mod:`bronchopt_ros.render`):

* **depth** (the default, fast): the encoder predicts a scale-normalised log-depth map (and a
  per-pixel confidence) from the RGB frame once; the pose is refined by Gauss-Newton /
  Levenberg-Marquardt on scale-invariant log-depth residuals (Eigen 2014)
  ``r_i = (log z_i(pose) - p_i) - mean_w(log z - p)`` with the renderer's closed-form Jacobian,
  coarse to fine over an image pyramid, with robust weights.
* **features** (the paper's): dense encoder features of the frame once; per iteration the depth is
  rendered differentiably, encoded, and the cosine similarity maximised with Adam.

Several start hypotheses may be given; the one with the best final cost wins.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Camera, Pose
from .optimize import clamp_step
from .render.projection import log_depth_jacobian

__all__ = ["DepthTarget", "DepthRegConfig", "RegResult", "PosePrior", "register_depth", "rotation_hypotheses", "centerline_hypotheses", "si_cost",
           "FeatureRegConfig", "register_features"]


@dataclass
class DepthTarget:
    """The frame's predicted log-depth (any offset: only shapes matter) and confidence weights,
    on the grid of ``camera`` (the full field of view at the prediction's resolution)."""

    log_depth: torch.Tensor  # (h, w)
    weight: torch.Tensor  # (h, w) in [0, 1]
    camera: Camera
    features: torch.Tensor | None = None  # the encoder's dense RGB features (paper mode), if any
    embedding: torch.Tensor | None = None  # the encoder's global embedding (relocalisation), if any
    embed: Callable[[], torch.Tensor] | None = field(default=None, repr=False)  # ... made on demand
    _levels: dict = field(default_factory=dict, repr=False)

    def global_embedding(self) -> torch.Tensor | None:
        """The global embedding: the one given, or made now by ``embed`` (once), or None."""
        if self.embedding is None and self.embed is not None:
            self.embedding = self.embed()
        return self.embedding

    @classmethod
    def from_depth(cls, depth: np.ndarray | torch.Tensor, camera: Camera, valid=None) -> "DepthTarget":
        """From a metric (or any-scale) depth map; zero / invalid pixels get weight 0."""
        d = torch.as_tensor(np.asarray(depth, np.float32) if not torch.is_tensor(depth) else depth).float()
        ok = d > 0 if valid is None else torch.as_tensor(valid).bool() & (d > 0)
        logd = torch.where(ok, torch.log(d.clamp_min(1e-9)), torch.zeros_like(d))
        return cls(logd, ok.float(), camera)

    def level(self, width: int) -> tuple[Camera, torch.Tensor, torch.Tensor]:
        """(camera, log_depth flat, weight flat) resampled to ``width`` px (cached, float64)."""
        if width not in self._levels:
            h0, w0 = self.log_depth.shape
            height = max(1, int(round(width * h0 / w0)))
            cam = self.camera.scaled(width, height)
            if (height, width) == (h0, w0):
                ld, w = self.log_depth, self.weight
            else:
                # Bilinear at the level's pixel centres (align_corners=False matches Camera.scaled),
                # not averaged over the coarse pixel: the renderer casts one ray through each pixel
                # centre, so the target must be sampled there too. (Area averaging, antialias=True
                # until session 11, flattened the far lumen's depth peak at the coarse levels, a
                # bias the solver followed along the airway: with the exact depth as the target,
                # the frame-wise easy starts ended at a median 3.97 mm through (16, 32, 64) px,
                # 0.00 mm with point sampling.)
                wsum = F.interpolate(self.weight[None, None], (height, width), mode="bilinear",
                                     align_corners=False)[0, 0]
                ld = F.interpolate((self.log_depth * self.weight)[None, None], (height, width), mode="bilinear",
                                   align_corners=False)[0, 0]
                ld = ld / wsum.clamp_min(1e-6)
                w = wsum
            self._levels[width] = (cam, ld.reshape(-1).double(), w.reshape(-1).double())
        return self._levels[width]


@dataclass
class DepthRegConfig:
    """Coarse-to-fine Gauss-Newton/LM on scale-invariant log-depth residuals."""

    pyramid: tuple[int, ...] = (24, 48)  # solver image widths, coarse to fine
    iterations: tuple[int, ...] = (8, 6)  # iteration cap per level
    huber_k: float = 1.345  # Huber threshold in robust std (MAD) units
    lambda0: float = 1e-3  # initial LM damping (relative to the Hessian diagonal)
    max_step_m: float = 0.004  # clamp per iteration, translation (m)
    max_step_rad: float = 0.15  # clamp per iteration, rotation (rad)
    tol_m: float = 2e-6  # convergence: translation step (m)
    tol_rad: float = 2e-5  # convergence: rotation step (rad)
    min_valid: int = 30  # fewer valid pixels than this: give up (camera outside / looking at nothing)
    keep: int = 2  # hypotheses kept after the coarsest level (the rest are dropped)


@dataclass
class RegResult:
    pose: Pose
    cost: float  # robust SI cost at the finest level (lower is better)
    si_error: float  # plain scale-invariant log error (RMS of the SI residual), finest level
    iterations: int
    time_s: float
    valid_fraction: float
    inside: bool
    converged: bool
    start_index: int = 0
    # what the solver minimised at the finest level: the robust cost plus the prior's (= cost
    # without a prior); results from several starts are ranked by it
    objective: float = math.nan


def _si_system(renderer, cam: Camera, pose: Pose, target_ld: torch.Tensor, target_w: torch.Tensor,
               with_jacobian: bool = True):
    """Scale-invariant residuals at ``pose``: (r, sqrt-weights, J or None, valid_fraction, inside)."""
    planes, inside = renderer.hit_planes(cam, pose)
    if planes.count == 0:
        return None, None, None, 0.0, False
    planes = planes.to(torch.float64)
    idx = planes.index
    w = target_w[idx]
    keep = w > 1e-3
    if int(keep.sum()) < 3:
        return None, None, None, planes.count / (cam.width * cam.height), inside > 0.5
    e = torch.log(planes.depth0()[keep]) - target_ld[idx][keep]
    w = w[keep]
    wn = w / w.sum()
    r = e - (wn * e).sum()
    J = None
    if with_jacobian:
        Jl = log_depth_jacobian(planes)[keep]
        J = Jl - (wn[:, None] * Jl).sum(0, keepdim=True)
    return r, w, J, planes.count / (cam.width * cam.height), inside > 0.5


def _mad(r: torch.Tensor) -> float:
    return float(1.4826 * (r - r.median()).abs().median())


def _robust(r: torch.Tensor, w: torch.Tensor, k: float, sigma: float) -> tuple[torch.Tensor, float, float]:
    """Huber weights (scale ``sigma``) times the confidence weights; returns (weights, robust
    cost, plain weighted rms)."""
    a = r.abs() / sigma
    hub = torch.where(a <= k, torch.ones_like(a), k / a.clamp_min(1e-12))
    rho = torch.where(a <= k, 0.5 * a**2, k * a - 0.5 * k**2) * sigma**2
    wsum = w.sum()
    cost = float((w * rho).sum() / wsum)
    rms = float(torch.sqrt((w * r**2).sum() / wsum))
    return w * hub, cost, rms


def si_cost(renderer, target: DepthTarget, pose: Pose, width: int, huber_k: float = 1.345):
    """Robust scale-invariant cost and plain SI error of ``pose`` at ``width`` px (inf if empty)."""
    cam, ld, wt = target.level(width)
    r, w, _, vf, inside = _si_system(renderer, cam, pose, ld, wt, with_jacobian=False)
    if r is None:
        return math.inf, math.inf, vf, inside
    _, cost, rms = _robust(r, w, huber_k, max(_mad(r), 1e-3))
    return cost, rms, vf, inside


def _damped_step(H: torch.Tensor, g: torch.Tensor, lam: float, max_m: float, max_rad: float) -> np.ndarray | None:
    """Marquardt step ``-(H + lam diag H)^-1 g``, clamped per part (None if singular)."""
    try:
        dx = -torch.linalg.solve(H + lam * torch.diag(torch.diagonal(H).clamp_min(1e-12)), g)
    except RuntimeError:
        return None
    return clamp_step(dx.numpy(), max_m, max_rad)


@dataclass
class PosePrior:
    """A Gaussian prior on the pose around ``center``: standard deviations ``sigma_m`` (translation),
    ``sigma_rad`` (rotation) and ``sigma_roll`` (rotation about the optical axis; None = ``sigma_rad``)
    of the right increment ``log(center^-1 pose)``. Its cost is scaled by the level's squared
    residual scale, so one sigma away costs as much as the mean robust data cost of a pixel one
    residual-sigma off (the data term is a per-pixel mean)."""

    center: Pose
    sigma_m: float
    sigma_rad: float
    sigma_roll: float | None = None

    def info(self) -> np.ndarray:
        roll = self.sigma_rad if not self.sigma_roll else self.sigma_roll
        return np.array([1.0 / self.sigma_m**2] * 3 + [1.0 / self.sigma_rad**2] * 2 + [1.0 / roll**2])

    def residual(self, pose: Pose) -> np.ndarray:
        return (self.center.inv() @ pose).log()


def _prior_cost(prior: PosePrior | None, pose: Pose, scale: float) -> float:
    if prior is None:
        return 0.0
    e = prior.residual(pose)
    return 0.5 * scale * float((prior.info() * e * e).sum())


def _with_prior(H: torch.Tensor, g: torch.Tensor, prior: PosePrior | None, pose: Pose, scale: float):
    """The Gauss-Newton system (H, g) plus the prior's term (its Jacobian taken as identity in the
    right increment), for the cost :func:`_prior_cost`."""
    if prior is None:
        return H, g
    info = torch.as_tensor(scale * prior.info(), dtype=H.dtype)
    return H + torch.diag(info), g + info * torch.as_tensor(prior.residual(pose), dtype=H.dtype)


def _refine_level(renderer, cam, ld, wt, pose: Pose, iters: int, cfg: DepthRegConfig, prior: PosePrior | None = None):
    lam = cfg.lambda0
    it = 0
    converged = False
    r, w, J, vf, inside = _si_system(renderer, cam, pose, ld, wt)
    if r is None or r.numel() < cfg.min_valid:
        return pose, math.inf, math.inf, 0, vf, inside, False, math.inf
    # One robust scale per level (costs of different iterates stay comparable); it only shrinks.
    sigma = max(_mad(r), 1e-4)
    W, cost, rms = _robust(r, w, cfg.huber_k, sigma)
    ps = sigma * sigma  # the prior's scale at this level
    total = cost + _prior_cost(prior, pose, ps)
    while it < iters:
        it += 1
        JW = J * W[:, None]
        wsum = float(w.sum())
        # The data cost is a weighted mean: its Gauss-Newton system, likewise.
        H, g = _with_prior(JW.T @ J / wsum, JW.T @ r / wsum, prior, pose, ps)
        dx = _damped_step(H, g, lam, cfg.max_step_m, cfg.max_step_rad)
        if dx is None:
            break
        tn, rn = float(np.linalg.norm(dx[:3])), float(np.linalg.norm(dx[3:]))
        cand = pose.retract(dx)
        r2, w2, J2, vf2, inside2 = _si_system(renderer, cam, cand, ld, wt)
        if r2 is not None and r2.numel() >= cfg.min_valid:
            W2, cost2, rms2 = _robust(r2, w2, cfg.huber_k, sigma)
            total2 = cost2 + _prior_cost(prior, cand, ps)
            if total2 <= total * (1 + 1e-9):
                pose, r, w, J, W, cost, rms, vf, inside = cand, r2, w2, J2, W2, cost2, rms2, vf2, inside2
                total = total2
                lam = max(lam * 0.3, 1e-7)
                if tn < cfg.tol_m and rn < cfg.tol_rad:
                    converged = True
                    break
                continue
        lam *= 10.0
        if lam > 1e4:
            converged = True  # no descent direction left at this level
            break
    return pose, cost, rms, it, vf, inside, converged, total


def register_depth(renderer, target: DepthTarget, starts: list[Pose], cfg: DepthRegConfig | None = None,
                   prior: PosePrior | None = None) -> RegResult:
    """Refine every start at the coarsest level, keep the ``cfg.keep`` best, refine those coarse
    to fine; return the best by robust SI cost at the finest level. ``prior`` (optional) keeps
    the solution near a predicted pose (the tracker's odometry)."""
    cfg = cfg or DepthRegConfig()
    t0 = time.perf_counter()
    total_it = 0
    levels = list(zip(cfg.pyramid, cfg.iterations))
    results = []
    for k, pose in enumerate(starts):
        width, iters = levels[0]
        cam, ld, wt = target.level(width)
        pose, cost, rms, it, vf, inside, conv, obj = _refine_level(renderer, cam, ld, wt, pose, iters, cfg, prior)
        total_it += it
        results.append(RegResult(pose, cost, rms, it, 0.0, vf, inside, conv, k, obj))
    results.sort(key=_rank)
    finals = []
    for res in results[: max(1, cfg.keep)]:
        pose = res.pose
        for width, iters in levels[1:]:
            cam, ld, wt = target.level(width)
            pose, cost, rms, it, vf, inside, conv, obj = _refine_level(renderer, cam, ld, wt, pose, iters, cfg, prior)
            total_it += it
            res = RegResult(pose, cost, rms, 0, 0.0, vf, inside, conv, res.start_index, obj)
        finals.append(res)
    best = min(finals, key=_rank)
    best.iterations = total_it
    best.time_s = time.perf_counter() - t0
    return best


def rotation_hypotheses(pose: Pose, tilt: float = 0.3, n_tilt: int = 6, roll: float = 0.4) -> list[Pose]:
    """``pose`` and copies turned about it: tilted by ``tilt`` rad in ``n_tilt`` directions and
    rolled by +-``roll`` rad about the optical axis (widens the basin of convergence)."""
    out = [pose]
    for a in np.linspace(0.0, 2 * np.pi, n_tilt, endpoint=False):
        out.append(pose.retract([0, 0, 0, tilt * np.cos(a), tilt * np.sin(a), 0.0]))
    if roll > 0:
        out += [pose.retract([0, 0, 0, 0, 0, roll]), pose.retract([0, 0, 0, 0, 0, -roll])]
    return out


def centerline_hypotheses(centerline, pose: Pose, radius: float = 0.01, spacing: float = 0.002,
                          rolls: tuple[float, ...] = (0.0,)) -> list[Pose]:
    """Poses on the airway centerline within ``radius`` (m) of ``pose``'s centre, every
    ``spacing`` along each branch, looking down the branch, with ``pose``'s roll (plus ``rolls``).

    The scope mostly looks along the airway, so these starts cover what a perturbed start
    (several mm and tens of degrees off) cannot reach by local descent."""
    if centerline is None or not len(centerline):
        return []
    out = []
    x_ref = pose.R[:, 0]
    for b in centerline.branches:
        pts = b.points
        d = np.linalg.norm(pts - pose.t, axis=1)
        if d.min() > radius:
            continue
        seg = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
        for s in np.arange(0.0, seg[-1], spacing):
            i = int(np.searchsorted(seg, s))
            i = min(max(i, 0), len(pts) - 1)
            if d[i] > radius:
                continue
            j = min(len(pts) - 1, i + 3)
            k = max(0, j - 6)
            z = pts[j] - pts[k]
            nz = np.linalg.norm(z)
            if nz < 1e-9:
                continue
            z = z / nz
            x = x_ref - (x_ref @ z) * z
            if np.linalg.norm(x) < 1e-6:
                x = np.cross(z, [1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.cross(z, [0.0, 1.0, 0.0])
            x /= np.linalg.norm(x)
            base = Pose(np.column_stack([x, np.cross(z, x), z]), pts[i])
            for roll in rolls:
                out.append(base.retract([0, 0, 0, 0, 0, roll]) if roll else base)
    return out


def _rank(r: RegResult):
    """Prefer views from inside the lumen, then the lower objective (robust cost plus the prior's)."""
    return (not r.inside, r.cost if math.isnan(r.objective) else r.objective)




# ---------------------------------------------------------------------- the paper's objective
@dataclass
class FeatureRegConfig:
    """The paper-faithful mode: maximise the encoder similarity between the frame's dense features
    and those of the depth rendered at the pose, with Adam through the differentiable renderer."""

    width: int = 64  # render width for the depth encoder
    max_iters: int = 60
    lr_trans: float = 1e-3
    lr_rot: float = 2e-2


def register_features(renderer, encoder, rgb_features: torch.Tensor, camera: Camera, starts: list[Pose],
                      cfg: FeatureRegConfig | None = None) -> RegResult:
    """Adam on ``1 - similarity(F_rgb, encode_depth(render(pose)))`` from each start; the best
    final similarity wins. ``camera`` is the frame's camera (any size; rendered at ``cfg.width``)."""
    from .optimize import AdamConfig, adam_refine

    cfg = cfg or FeatureRegConfig()
    cam = camera.scaled(cfg.width, max(1, round(cfg.width * camera.height / camera.width)))
    t0 = time.perf_counter()

    def loss_at(pose: Pose):
        f = renderer.depth_fn(cam, pose)
        if f.planes.count < 10:
            return lambda xi: torch.tensor(math.inf, dtype=torch.float64) + 0 * xi.sum()
        valid = f.valid

        def loss(xi: torch.Tensor) -> torch.Tensor:
            depth = f(xi)
            fd = encoder.encode_depth(depth, valid)
            return 1.0 - encoder.similarity(rgb_features, fd).double()
        return loss

    acfg = AdamConfig(lr_trans=cfg.lr_trans, lr_rot=cfg.lr_rot, max_iters=cfg.max_iters)
    best = None
    total = 0
    for k, pose in enumerate(starts):
        res = adam_refine(loss_at, pose, acfg)
        total += res.iterations
        out = renderer.render(cam, res.pose, normals=False)
        r = RegResult(res.pose, res.loss, res.loss, res.iterations, 0.0, out.valid_fraction, out.inside,
                      res.converged, k)
        if best is None or _rank(r) < _rank(best):
            best = r
    best.iterations = total
    best.time_s = time.perf_counter() - t0
    return best


# ------------------------------------------------- the paper's objective, solved by Gauss-Newton
@dataclass
class FeatureGNConfig:
    """Levenberg-Marquardt on the paper's objective: residuals ``f_depth(pose) - f_rgb`` of the
    L2-normalised dense features (so ``|r|^2 / 2`` per cell = 1 - cosine similarity). The feature
    Jacobian is d f / d depth (finite differences of one *batched* depth-encoder call along the six
    columns of the closed-form depth Jacobian) times d depth / d pose: seven depth maps per
    iteration, one render."""

    width: int = 64  # render width for the depth encoder
    iterations: int = 6
    lambda0: float = 1e-2
    eps_m: float = 2e-4  # finite-difference steps along the depth Jacobian's columns
    eps_rad: float = 4e-3
    max_step_m: float = 0.003
    max_step_rad: float = 0.1


def _feature_system(renderer, encoder, rgb_features, cam: Camera, pose: Pose, cfg: FeatureGNConfig):
    """Feature residuals at ``pose`` and their Jacobian: (r, J (R, 6), valid_fraction, inside)."""
    from .render.projection import depth_jacobian

    planes, inside = renderer.hit_planes(cam, pose)
    n = cam.width * cam.height
    if planes.count < 10:
        return None, None, 0.0, False
    planes = planes.to(torch.float32)
    z = planes.depth0()
    base = torch.zeros(n)
    base[planes.index] = z
    valid = torch.zeros(n, dtype=torch.bool)
    valid[planes.index] = True
    maps = [base]
    eps = torch.tensor([cfg.eps_m] * 3 + [cfg.eps_rad] * 3)
    Jd = depth_jacobian(planes)  # (M, 6)
    for k in range(6):
        m = base.clone()
        m[planes.index] = (z + eps[k] * Jd[:, k]).clamp_min(1e-5)
        maps.append(m)
    D = torch.stack(maps).reshape(len(maps), cam.height, cam.width)
    V = valid.reshape(1, cam.height, cam.width).expand(len(maps), -1, -1)
    with torch.no_grad():
        F = encoder.encode_depth(D, V).double()  # (7, C, g, g)
    mask = F[0].abs().sum(0) > 0
    if int(mask.sum()) < 4:
        return None, None, planes.count / n, inside > 0.5
    r = (F[0] - rgb_features.double())[:, mask].reshape(-1)
    J = ((F[1:] - F[0:1])[:, :, mask].reshape(6, -1) / eps.double()[:, None]).T  # (R, 6)
    return r, J, planes.count / n, inside > 0.5


def register_features_gn(renderer, encoder, rgb_features: torch.Tensor, camera: Camera, starts: list[Pose],
                         cfg: FeatureGNConfig | None = None, prior: PosePrior | None = None) -> RegResult:
    """LM on the dense-feature residuals from each start; the lowest final cost (mean 1 - cos) wins.
    ``prior`` (optional) keeps the solution near a predicted pose, scaled like the depth solver's:
    one sigma away costs as much as the mean squared residual at the start."""
    cfg = cfg or FeatureGNConfig()
    cam = camera.scaled(cfg.width, max(1, round(cfg.width * camera.height / camera.width)))
    t0 = time.perf_counter()
    best, total = None, 0
    for k, pose in enumerate(starts):
        r, J, vf, inside = _feature_system(renderer, encoder, rgb_features, cam, pose, cfg)
        if r is None:
            continue
        ps = max(float((r * r).mean()), 1e-12)  # the prior's scale for this start
        cost = 0.5 * float((r * r).mean())
        total_cost = cost + _prior_cost(prior, pose, ps)
        lam, it, converged = cfg.lambda0, 0, False
        while it < cfg.iterations:
            it += 1
            n = r.numel()  # the data cost is a mean: its system, likewise
            H, g = _with_prior(J.T @ J / n, J.T @ r / n, prior, pose, ps)
            dx = _damped_step(H, g, lam, cfg.max_step_m, cfg.max_step_rad)
            if dx is None:
                break
            tn, rn = float(np.linalg.norm(dx[:3])), float(np.linalg.norm(dx[3:]))
            cand = pose.retract(dx)
            r2, J2, vf2, inside2 = _feature_system(renderer, encoder, rgb_features, cam, cand, cfg)
            total2 = 0.5 * float((r2 * r2).mean()) + _prior_cost(prior, cand, ps) if r2 is not None else math.inf
            if total2 <= total_cost:
                pose, r, J, vf, inside = cand, r2, J2, vf2, inside2
                cost, total_cost = 0.5 * float((r * r).mean()), total2
                lam = max(lam * 0.3, 1e-6)
                if tn < 1e-5 and rn < 1e-4:
                    converged = True
                    break
            else:
                lam *= 10.0
                if lam > 1e3:
                    converged = True
                    break
        total += it
        res = RegResult(pose, cost, cost, it, 0.0, vf, inside, converged, k, total_cost)
        if best is None or _rank(res) < _rank(best):
            best = res
    if best is None:
        best = RegResult(starts[0], math.inf, math.inf, 0, 0.0, 0.0, False, False, 0)
    best.iterations = total
    best.time_s = time.perf_counter() - t0
    return best
