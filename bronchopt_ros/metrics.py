"""Image and pose metrics of the BronchOpt paper (../shared/REFERENCE.md).

Depth-map metrics (between a depth map rendered at the estimate and one at the truth; numpy
or torch (H, W) arrays in metres, 0 / non-finite = invalid, optional boolean ``mask``):

* :func:`disparity_similarity` -- cosine of the median / mean-absolute-deviation normalised
  disparity maps, mapped to [0, 1] (1 = identical up to scale).
* :func:`normal_correlation` -- mean cosine between the surface normals computed from the two
  depth maps through the camera intrinsics (by default weighted by the 3D gradient magnitude,
  as in the paper's code); 1 = identical.
* :func:`scale_invariant_log_error` -- Eigen et al. 2014: ``mean(d^2) - mean(d)^2`` with
  ``d = log z - log z_ref`` (0 = identical up to scale).
* :func:`depth_metrics` -- the three at once, as a dict.

Pose metrics (:class:`~bronchopt_ros.geometry.Pose`, metres): :func:`translation_error_mm`,
:func:`rotation_error_rad` / :func:`rotation_error_deg` (geodesic angle on SO(3)),
:func:`is_success` (within 5 mm and 10 deg) and :func:`pose_error_stats` giving the pose-based
keys of the CONTRACT's ``metrics.json``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .geometry import Camera, Pose

__all__ = [
    "disparity_similarity", "normals_from_depth", "normal_correlation", "scale_invariant_log_error",
    "depth_metrics", "translation_error_mm", "rotation_error_rad", "rotation_error_deg", "is_success",
    "pose_error_stats", "SUCCESS_TRANS_MM", "SUCCESS_ROT_DEG",
]

SUCCESS_TRANS_MM = 5.0
SUCCESS_ROT_DEG = 10.0


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _common_mask(a: np.ndarray, b: np.ndarray, mask) -> np.ndarray:
    m = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    if mask is not None:
        m &= _np(mask).astype(bool)
    return m


def _mad_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    med = np.median(x)
    return (x - med) / max(float(np.mean(np.abs(x - med))), eps)


def disparity_similarity(depth, depth_ref, mask=None) -> float:
    """Cosine similarity of median/MAD-normalised disparities, in [0, 1]; NaN without pixels."""
    a, b = _np(depth), _np(depth_ref)
    m = _common_mask(a, b, mask)
    if m.sum() < 2:
        return math.nan
    x, y = _mad_normalise(1.0 / a[m]), _mad_normalise(1.0 / b[m])
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx < 1e-12 or ny < 1e-12:  # a flat disparity map: similar only to another flat one
        return 1.0 if nx < 1e-12 and ny < 1e-12 else 0.5
    cos = float(x @ y / (nx * ny))
    return (min(max(cos, -1.0), 1.0) + 1.0) / 2.0


def normals_from_depth(depth, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals (H, W, 3) of the surface a z-depth map sees (camera frame, towards the camera,
    as the renderer's; central differences of the back-projected points, one-sided at the image
    border), their validity (H, W) (the pixel and its four neighbours valid) and the 3D gradient
    magnitude (H, W)."""
    z = _np(depth)
    ok = np.isfinite(z) & (z > 0)
    P = camera.rays(np.float64) * np.where(ok, z, 0.0)[..., None]
    Px, Py = np.gradient(P, axis=1), np.gradient(P, axis=0)
    n = np.cross(Py, Px)  # (image x right, y down: towards the camera)
    norm = np.linalg.norm(n, axis=-1)
    okp = np.pad(ok, 1, mode="edge")
    valid = ok & okp[:-2, 1:-1] & okp[2:, 1:-1] & okp[1:-1, :-2] & okp[1:-1, 2:] & (norm > 0)
    n = np.where(valid[..., None], n / np.maximum(norm, 1e-300)[..., None], 0.0)
    grad = np.linalg.norm(Px, axis=-1) + np.linalg.norm(Py, axis=-1)
    return n, valid, grad


def normal_correlation(depth, depth_ref, camera: Camera, mask=None, edge_weight: bool = True) -> float:
    """Mean cosine between the normals of two depth maps (weighted by the mean 3D gradient
    magnitude when ``edge_weight``), in [-1, 1]; NaN without pixels."""
    n1, v1, g1 = normals_from_depth(depth, camera)
    n2, v2, g2 = normals_from_depth(depth_ref, camera)
    m = v1 & v2
    if mask is not None:
        m &= _np(mask).astype(bool)
    if not m.any():
        return math.nan
    cos = np.clip((n1 * n2).sum(-1), -1.0, 1.0)[m]
    w = 0.5 * (g1 + g2)[m] if edge_weight else np.ones_like(cos)
    if w.sum() <= 0:
        w = np.ones_like(cos)
    return float((cos * w).sum() / w.sum())


def scale_invariant_log_error(depth, depth_ref, mask=None) -> float:
    """Eigen et al. (2014) scale-invariant log error ``mean(d^2) - mean(d)^2``, ``d = log z - log z_ref``."""
    a, b = _np(depth), _np(depth_ref)
    m = _common_mask(a, b, mask)
    if not m.any():
        return math.nan
    d = np.log(a[m]) - np.log(b[m])
    return float(max(np.mean(d * d) - np.mean(d) ** 2, 0.0))


def depth_metrics(depth, depth_ref, camera: Camera, mask=None) -> dict:
    """``{"disp_sim", "normal_corr", "si_log"}`` between ``depth`` and the reference."""
    return {
        "disp_sim": disparity_similarity(depth, depth_ref, mask),
        "normal_corr": normal_correlation(depth, depth_ref, camera, mask),
        "si_log": scale_invariant_log_error(depth, depth_ref, mask),
    }


# ---------------------------------------------------------------------- poses
def translation_error_mm(est: Pose, gt: Pose) -> float:
    """Distance between the camera centres, millimetres."""
    return est.translation_error(gt) * 1000.0


def rotation_error_rad(est: Pose, gt: Pose) -> float:
    """Geodesic angle between the orientations on SO(3), radians."""
    return est.rotation_error(gt)


def rotation_error_deg(est: Pose, gt: Pose) -> float:
    return math.degrees(est.rotation_error(gt))


def is_success(est: Pose | None, gt: Pose, trans_mm: float = SUCCESS_TRANS_MM, rot_deg: float = SUCCESS_ROT_DEG) -> bool:
    """Within ``trans_mm`` and ``rot_deg`` of the truth (None, a lost frame, is a failure)."""
    return est is not None and translation_error_mm(est, gt) <= trans_mm and rotation_error_deg(est, gt) <= rot_deg


def pose_error_stats(est: Sequence[Pose | None], gt: Sequence[Pose], trans_mm: float = SUCCESS_TRANS_MM,
                     rot_deg: float = SUCCESS_ROT_DEG) -> dict:
    """Pose-based ``metrics.json`` keys over matched frames.

    ``trans_err_mm_mean``, ``trans_err_mm_median``, ``rot_err_rad_mean``, ``rot_err_deg_mean``
    (over the frames with an estimate), ``success_rate`` (share of all frames within
    ``trans_mm`` and ``rot_deg``; a None estimate is a failure), ``frames``; plus the paper's
    success-only means ``trans_err_mm_mean_success``, ``rot_err_rad_mean_success`` and
    ``rot_err_deg_mean_success``. NaN where there is nothing to average.
    """
    if len(est) != len(gt):
        raise ValueError(f"pose_error_stats: {len(est)} estimates for {len(gt)} ground-truth poses")
    t = np.array([translation_error_mm(e, g) for e, g in zip(est, gt) if e is not None])
    r = np.array([rotation_error_rad(e, g) for e, g in zip(est, gt) if e is not None])
    ok = (t <= trans_mm) & (np.degrees(r) <= rot_deg) if len(t) else np.zeros(0, bool)

    def mean(x):
        return float(np.mean(x)) if len(x) else math.nan

    return {
        "trans_err_mm_mean": mean(t),
        "trans_err_mm_median": float(np.median(t)) if len(t) else math.nan,
        "rot_err_rad_mean": mean(r),
        "rot_err_deg_mean": math.degrees(mean(r)) if len(r) else math.nan,
        "success_rate": float(ok.sum() / len(gt)) if len(gt) else math.nan,
        "frames": len(gt),
        "trans_err_mm_mean_success": mean(t[ok]),
        "rot_err_rad_mean_success": mean(r[ok]),
        "rot_err_deg_mean_success": math.degrees(mean(r[ok])) if ok.any() else math.nan,
    }
