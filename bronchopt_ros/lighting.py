"""The scope's light guide beside the lens: estimate where it is, and re-light the frame as if the
light sat on the lens axis before the encoder sees it.

Why. A bronchoscope's light guides sit beside the lens, ~1-1.5 mm off its axis on real scopes. In
bronchi 2-3 mm wide that skews the shading: the wall on the light's side is brighter, and an
encoder trained on near-axis light (0-0.6 mm) reads the skew as a tilted wall (the test split's
deepest generations, 0.15 rad of rotation error at a 1.47 mm offset against 0.07 at 0.3 mm; model
card, "Limits"). Training on wider offsets traded one appearance domain for the other (session
25). The physics is simple instead: under a point light at ``L`` (camera frame, beside the lens,
z = 0) with inverse-square falloff, a wall point ``P`` with normal ``n`` receives

    E_L(P) = max(0, n . (L - P) / |L - P|) / |L - P|^2

so the frame divided (in linear intensity) by ``rho = E_L / E_0`` is the frame an on-axis light
would give, with the same albedo and camera gain (:func:`relight`).

``rho`` needs the wall's geometry in the frame's own pixels. A render of the CT at the tracked
pose is not that: where the pose is off, its misalignment with the image re-lit the frame into
agreement with the wrong pose (session 26, test case 3100: no gain in generations 5+, while the
CT at the true pose gave 0.15 -> 0.08 rad). The encoder's own depth of the previous frame is
pixel-aligned with the image (30 frames/s: little moves between frames), scaled to metres by that
frame's registration (:class:`LightCompensator`). Only narrow views are re-lit (``narrow_mm``):
in the trachea the offset barely shows, and re-lighting there only added the depth's errors to the
frame (validation: worse without the gate).

Where the light is: given by the scope's maker (``mode: fixed``, ``light_offset_mm``), or
estimated from the video (``mode: auto``, :class:`LightEstimator`): on confidently tracked narrow
views, the frame's log intensity minus the log irradiance a candidate light gives the rendered CT
wall is the log albedo plus the camera's gain, whose spread over the pixels is smallest for the
true light; the spreads are summed over frames, on a grid of candidate positions (within ~0.4 mm
of the true light on the validation and test procedures that reach narrow bronchi, any direction;
none on those that stay wide). Over-estimating the offset hurts more than under-estimating it
(3100, true 1.47 mm: re-lit at 1.0 mm 0.09 rad in generations 5+, at 2.0 mm 0.18, not re-lit
0.15), so the estimate is shrunk (``shrink`` 0.85, chosen on the validation cases).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import Camera
from .metrics import normals_from_depth

__all__ = ["LightingConfig", "irradiance", "irradiance_ratio", "relight",
           "LightEstimator", "LightCompensator"]

log = logging.getLogger(__name__)


@dataclass
class LightingConfig:
    mode: str = "auto"  # auto (estimate the light's offset from the video) | fixed (light_offset_mm) | none
    light_offset_mm: tuple[float, float] = (0.0, 0.0)  # (x, y) of the light beside the lens, camera frame (fixed)
    gamma: float = 2.2  # the camera's encoding gamma (the frame's intensity is decoded to linear with it)
    shrink: float = 0.85  # share of the estimated offset applied (over-estimates hurt more than under-estimates)
    max_offset_mm: float = 2.5  # candidates of the estimate lie within this radius
    grid_mm: float = 0.25  # spacing of the candidate grid
    min_frames: int = 20  # frames the estimate needs before it is used
    max_frames: int = 200  # ... and after which it is kept (no more samples: their cost ends)
    every: int = 3  # frames between two samples of the estimate (confidently tracked frames)
    width: int = 32  # px: resolution of the estimate's samples
    pixels: int = 256  # at most this many of a sample's pixels are used (evenly spread)
    # only views whose median wall distance is below this (narrow airways) are re-lit and sampled:
    # in wider ones the light's offset barely shows, re-lighting only adds the depth's errors to the
    # frame, and what the model leaves out (vignetting, texture) would decide the estimate
    narrow_mm: float = 6.0

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "fixed", "none"):
            raise ValueError(f"lighting mode must be auto, fixed or none, got {self.mode!r}")
        if len(self.light_offset_mm) != 2 or not np.all(np.isfinite(self.light_offset_mm)):
            raise ValueError(f"light_offset_mm must be two finite numbers, got {self.light_offset_mm}")
        if not (self.gamma > 0 and 0 <= self.shrink <= 1 and self.max_offset_mm > 0 and self.grid_mm > 0):
            raise ValueError("lighting: gamma, max_offset_mm and grid_mm must be > 0 and shrink in [0, 1]")


def irradiance(points: np.ndarray, normals: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Irradiance (...,) at wall ``points`` (..., 3) with unit ``normals`` (towards the camera)
    from a point light at ``light`` (3,), camera frame, inverse-square; the cosine is kept above
    0.05 (grazing walls, noisy normals)."""
    to_light = light - points
    d = np.maximum(np.linalg.norm(to_light, axis=-1), 2e-4)
    cos = np.clip((normals * to_light).sum(-1) / d, 0.05, 1.0)
    return cos / d**2


def irradiance_ratio(points: np.ndarray, normals: np.ndarray, light: np.ndarray) -> np.ndarray:
    """``E_light / E_on-axis`` at the points (clipped to [0.05, 20])."""
    rho = irradiance(points, normals, light) / irradiance(points, normals, np.zeros(3))
    return np.clip(rho, 0.05, 20.0)


def relight(rgb: np.ndarray, rho: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """The uint8 frame ``rgb`` (H, W, 3) with its linear intensity divided by ``rho`` (any size:
    resized to the frame), its 99th percentile kept (the camera's gain). In the encoded values
    that is a factor ``rho ** (-1 / gamma)``: ``(lin / rho) ** (1 / gamma)``."""
    h, w = rgb.shape[:2]
    f = np.power(rho.astype(np.float32), np.float32(-1.0 / gamma))
    if f.shape != (h, w):
        f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
    out = rgb.astype(np.float32) * f[..., None]
    p_in, p_out = np.percentile(rgb[::3, ::3], 99), np.percentile(out[::3, ::3], 99)
    out *= float(p_in) / max(float(p_out), 1e-6)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _median_rows(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=1)`` by one partition (np.median partitions twice for an even count)."""
    m = a.shape[1] // 2
    if a.shape[1] % 2:
        return np.partition(a, m, axis=1)[:, m]
    part = np.partition(a, [m - 1, m], axis=1)
    return 0.5 * (part[:, m - 1] + part[:, m])


class LightEstimator:
    """The light's position beside the lens from tracked frames (see the module doc).

    ``add(gray, points, normals, valid)``: one frame's gray intensity (h, w, in [0, 1]) and the CT
    wall seen at its tracked pose (camera-frame points and normals, (h, w, 3)) where ``valid``.
    ``estimate()``: the light (3,) in metres at the summed spreads' minimum, or None before
    ``min_frames`` samples."""

    def __init__(self, config: LightingConfig | None = None):
        self.config = cfg = config or LightingConfig()
        g = np.arange(-cfg.max_offset_mm, cfg.max_offset_mm + 1e-9, cfg.grid_mm) * 1e-3
        x, y = np.meshgrid(g, g)
        keep = np.hypot(x, y) <= cfg.max_offset_mm * 1e-3 + 1e-12
        self.candidates = np.stack([x[keep], y[keep], np.zeros(int(keep.sum()))], 1).astype(np.float32)  # (K, 3)
        self._c2 = (self.candidates ** 2).sum(1)
        self.cost = np.zeros(len(self.candidates))
        self.frames = 0

    def add(self, gray: np.ndarray, points: np.ndarray, normals: np.ndarray, valid: np.ndarray) -> bool:
        m = valid & (gray > 0.02) & (gray < 0.98)  # (no black lumen, no clipped highlight)
        if m.sum() < 50 or np.median(points[..., 2][valid]) > self.config.narrow_mm * 1e-3:
            return False
        idx = np.flatnonzero(m)
        idx = idx[np.linspace(0, len(idx) - 1, min(len(idx), self.config.pixels)).astype(int)]
        P, N = points.reshape(-1, 3)[idx].astype(np.float32), normals.reshape(-1, 3)[idx].astype(np.float32)
        log_i = self.config.gamma * np.log(gray.reshape(-1)[idx].astype(np.float32))
        # |L - P|^2 and N . (L - P) for every candidate L and pixel P as (K, 3) x (3, M) products
        # (no (K, M, 3) arrays: ~4x faster than the broadcast form, the same costs to float32's digits)
        C = self.candidates
        d2 = np.maximum(self._c2[:, None] - 2.0 * (C @ P.T) + (P * P).sum(1)[None], np.float32(4e-8))
        cos = np.clip((C @ N.T - (N * P).sum(1)[None]) / np.sqrt(d2), 0.05, 1.0)
        r = log_i[None] - np.log(cos) + np.log(d2)  # log albedo x gain, per candidate
        r -= _median_rows(r)[:, None]
        self.cost += np.minimum(np.abs(r), 1.0).mean(1)  # a robust spread (outliers: highlights, misfits)
        self.frames += 1
        return True

    def estimate(self) -> np.ndarray | None:
        if self.frames < self.config.min_frames:
            return None
        return self.candidates[int(np.argmin(self.cost))].astype(np.float64)


class LightCompensator:
    """Re-lights each frame before the encoder (see the module doc). The tracker calls
    :meth:`registered` after each confidently registered frame (its image, its encoder output and
    pose); :meth:`__call__` re-lights the next frame from that frame's encoder depth.

    What a registered frame costs (its depth made metric, a sample of the estimate, the irradiance
    ratio for the next frame: a 32 px render and ~2-5 ms) is done by :meth:`idle` when the caller
    has time between frames (the node, after publishing), else first thing in the next
    :meth:`__call__`: the same work in the same order either way, so the outputs do not depend on
    the timing."""

    def __init__(self, config: LightingConfig | None = None):
        self.config = cfg = config or LightingConfig()
        self.estimator = LightEstimator(cfg) if cfg.mode == "auto" else None
        fixed = np.array([*cfg.light_offset_mm, 0.0]) * 1e-3
        self.light = fixed if cfg.mode == "fixed" else np.zeros(3)
        self._depth: tuple[np.ndarray, Camera, float] | None = None  # (metric depth, its camera, stamp)
        self._count = 0
        self.relit = 0  # frames re-lit
        self._logged: np.ndarray | None = None  # the estimate last logged
        self._pending: tuple | None = None  # the last registered frame, not yet used (:meth:`idle`)
        self._rho: tuple[np.ndarray, float] | None = None  # its irradiance ratio and stamp (None: no re-lighting)
        self._lock = threading.Lock()  # (idle() runs on the caller's thread, the rest on the encoder's)

    @property
    def active(self) -> bool:
        return self.config.mode != "none"

    def describe(self) -> str:
        """One line for the node's diagnostics: the mode, the light applied, the frames re-lit."""
        cfg = self.config
        if cfg.mode == "none":
            return "none"
        with self._lock:  # (called by the node's diagnostics timer: not while the estimate changes)
            if cfg.mode == "auto" and self.estimator.estimate() is None:
                return f"auto: no estimate yet ({self.estimator.frames} of {cfg.min_frames} narrow views sampled)"
            x, y = self.light[:2] * 1e3
        applied = f" x {cfg.shrink:.2f} applied" if cfg.mode == "auto" else ""
        return f"{cfg.mode}: light at ({x:.2f}, {y:.2f}) mm{applied}, {self.relit} frames re-lit"

    def __call__(self, rgb: np.ndarray, stamp: float) -> np.ndarray:
        """``rgb`` re-lit, or as it is (no light offset yet, or no recent registered depth)."""
        with self._lock:
            self._use_pending()
            if self._rho is None:
                return rgb
            rho, at = self._rho
            if not 0.0 <= stamp - at <= 0.2:  # (a depth from another moment: the view has changed)
                return rgb
            self.relit += 1
        return relight(rgb, rho, self.config.gamma)

    def _ratio(self) -> tuple[np.ndarray, float] | None:
        """``E_L / E_0`` on the last registered depth (and its stamp), if its view is to be re-lit."""
        light = self.light * (self.config.shrink if self.config.mode == "auto" else 1.0)
        if self._depth is None or not np.any(light):
            return None
        depth, cam, at = self._depth
        if np.median(depth[depth > 0]) > self.config.narrow_mm * 1e-3:
            return None
        normals, valid, _ = normals_from_depth(depth, cam)
        points = cam.rays() * depth[..., None]
        return np.where(valid, irradiance_ratio(points, normals, light), 1.0), at

    def registered(self, rgb: np.ndarray, stamp: float, log_depth: np.ndarray, camera: Camera, pose, renderer) -> None:
        """A confidently registered frame: its encoder log-depth (any offset) on ``camera``'s grid,
        made metric by the CT rendered at ``pose``; in ``auto`` mode every ``every``-th such frame
        is also a sample of the light's estimate. Kept until :meth:`idle` or the next frame."""
        with self._lock:
            self._use_pending()  # (two registered frames with no frame between: each still counts)
            self._pending = (rgb, stamp, log_depth, camera, pose, renderer)

    def idle(self) -> None:
        """Do the last registered frame's work now (the caller has time before the next frame)."""
        with self._lock:
            self._use_pending()

    def _use_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._learn(*pending)
            self._rho = self._ratio()  # (the next frame's re-lighting, ready before it comes)

    def _learn(self, rgb: np.ndarray, stamp: float, log_depth: np.ndarray, camera: Camera, pose, renderer) -> None:
        """A registered frame's depth made metric, and the estimate's sample when one is due."""
        cfg = self.config
        small = camera.scaled(cfg.width)
        sample = (self.estimator is not None and self.estimator.frames < cfg.max_frames
                  and self._count % max(cfg.every, 1) == 0)
        self._count += 1
        if not sample and not np.any(self.light):
            return  # (no light to compensate yet: the depth is not needed, only the estimate's samples)
        r = renderer.render(small, pose, normals=sample)
        valid = r.valid.cpu().numpy()
        if valid.mean() < 0.3:
            self._depth = None
            return
        ct_depth = r.depth.cpu().numpy()
        ld_small = cv2.resize(log_depth.astype(np.float32), (small.width, small.height), interpolation=cv2.INTER_AREA)
        log_scale = float(np.median(np.log(ct_depth[valid]) - ld_small[valid]))
        self._depth = (np.exp(log_depth + log_scale).astype(np.float32), camera, stamp)
        if sample:
            gray = cv2.resize(rgb, (small.width, small.height), interpolation=cv2.INTER_AREA).mean(-1) / 255.0
            points = small.rays() * ct_depth[..., None]
            if self.estimator.add(gray, points, r.normals.cpu().numpy(), valid):
                est = self.estimator.estimate()
                if est is not None:
                    if self._logged is None or np.linalg.norm(est - self._logged) > 0.3e-3:
                        log.info("light guide offset estimated at (%.2f, %.2f) mm from %d frames (applied x %.2f)",
                                 est[0] * 1e3, est[1] * 1e3, self.estimator.frames, cfg.shrink)
                        self._logged = est
                    self.light = est
