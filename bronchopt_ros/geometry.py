"""Small geometry types used everywhere instead of bare arrays.

Conventions (../shared/CONTRACT.md):

* ``Pose`` is the camera-to-CT transform ``T_ct_cam``: a point ``p_cam`` in the
  ``bronchoscope_optical_frame`` maps to ``p_ct = R @ p_cam + t``. ``t`` is the
  camera centre in the CT frame. Units are metres inside the code.
* The camera is in the optical convention: z forward, x right, y down.
* Pose perturbations are *right* (body-frame) increments ``T @ exp(xi)`` with
  ``xi = (v, w)``: ``v`` a translation in the camera frame (metres) and ``w`` a
  rotation vector (radians). Every solver and Jacobian in the project uses this.
* Depth is z-depth (distance along the optical axis), not range along the ray.
* Pixel centres sit at integer coordinates (OpenCV convention).

Rotation maths comes from ``scipy.spatial.transform``; the torch versions of
the SE(3) maps used inside differentiable code live in ``se3_exp_torch``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = ["Pose", "Camera", "hat", "so3_exp", "so3_log", "se3_exp_torch", "so3_exp_torch"]


def hat(w: np.ndarray) -> np.ndarray:
    """Skew-symmetric matrix of a 3-vector: ``hat(w) @ x == cross(w, x)``."""
    w = np.asarray(w, dtype=np.float64)
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def _left_jacobian_so3(w: np.ndarray) -> np.ndarray:
    """Left Jacobian of SO(3), maps the rotation-vector rate to the translation part of exp."""
    theta = float(np.linalg.norm(w))
    W = hat(w)
    if theta < 1e-8:
        return np.eye(3) + 0.5 * W + W @ W / 6.0
    a = (1.0 - np.cos(theta)) / theta**2
    b = (theta - np.sin(theta)) / theta**3
    return np.eye(3) + a * W + b * W @ W


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (Rodrigues; scipy's Rotation is ~50x slower per call,
    and the solvers call this every iteration)."""
    w = np.asarray(w, dtype=np.float64).reshape(3)
    theta = float(np.sqrt(w @ w))
    W = hat(w)
    if theta < 1e-8:
        return np.eye(3) + W + 0.5 * W @ W
    return np.eye(3) + (np.sin(theta) / theta) * W + ((1.0 - np.cos(theta)) / theta**2) * W @ W


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix, the inverse of :func:`so3_exp` (angle in [0, pi])."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    c = float(np.clip((np.trace(R) - 1.0) * 0.5, -1.0, 1.0))
    theta = float(np.arccos(c))
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if theta < 1e-6:
        return 0.5 * v
    if np.pi - theta < 1e-3:  # near a half turn the skew part vanishes: scipy's robust path
        return Rotation.from_matrix(R).as_rotvec()
    return (theta / (2.0 * np.sin(theta))) * v


@dataclass(frozen=True)
class Pose:
    """A rigid transform camera -> CT: ``p_ct = R @ p_cam + t`` (metres)."""

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.t, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("Pose: non-finite rotation or translation")
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def identity(cls) -> "Pose":
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_Rt(cls, R: np.ndarray, t: np.ndarray) -> "Pose":
        return cls(R, t)

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> "Pose":
        T = np.asarray(T, dtype=np.float64)
        return cls(T[:3, :3], T[:3, 3])

    @classmethod
    def from_quat(cls, q_xyzw: Sequence[float], t: Sequence[float]) -> "Pose":
        """From a quaternion in ROS order (x, y, z, w) and a translation.

        Raises ``ValueError`` for a non-finite or (near) zero quaternion; a
        non-unit quaternion is normalised.
        """
        q = np.asarray(q_xyzw, dtype=np.float64).reshape(4)
        n = np.linalg.norm(q)
        if not np.all(np.isfinite(q)) or n < 1e-6:
            raise ValueError(f"Pose: invalid quaternion {q.tolist()}")
        return cls(Rotation.from_quat(q / n).as_matrix(), t)

    @classmethod
    def from_tum(cls, row: Sequence[float]) -> "Pose":
        """From a TUM row ``x y z qx qy qz qw`` (without the stamp)."""
        row = np.asarray(row, dtype=np.float64).reshape(7)
        return cls.from_quat(row[3:7], row[0:3])

    @classmethod
    def exp(cls, xi: Sequence[float]) -> "Pose":
        """SE(3) exponential of ``xi = (v, w)``."""
        xi = np.asarray(xi, dtype=np.float64).reshape(6)
        v, w = xi[:3], xi[3:]
        return cls(so3_exp(w), _left_jacobian_so3(w) @ v)

    @classmethod
    def look_at(cls, eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 0, 1)) -> "Pose":
        """Camera at ``eye`` looking at ``target`` (z forward), image y roughly along ``-up``."""
        eye = np.asarray(eye, dtype=np.float64)
        z = np.asarray(target, dtype=np.float64) - eye
        z /= np.linalg.norm(z)
        up = np.asarray(up, dtype=np.float64)
        x = np.cross(z, up)
        if np.linalg.norm(x) < 1e-9:  # looking along `up`: pick any perpendicular
            x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        return cls(np.stack([x, y, z], axis=1), eye)

    # ------------------------------------------------------------------ accessors
    @property
    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.R
        T[:3, 3] = self.t
        return T

    @property
    def quat(self) -> np.ndarray:
        """Quaternion in ROS order (x, y, z, w), with w >= 0."""
        q = Rotation.from_matrix(self.R).as_quat()
        return q if q[3] >= 0 else -q

    def to_tum(self) -> np.ndarray:
        """``x y z qx qy qz qw`` (no stamp)."""
        return np.concatenate([self.t, self.quat])

    # ------------------------------------------------------------------ group operations
    def inv(self) -> "Pose":
        return Pose(self.R.T, -self.R.T @ self.t)

    def __matmul__(self, other: "Pose") -> "Pose":
        return Pose(self.R @ other.R, self.R @ other.t + self.t)

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Apply to points (..., 3): camera frame -> CT frame for a camera pose."""
        return np.asarray(points) @ self.R.T + self.t

    def log(self) -> np.ndarray:
        """SE(3) logarithm, the inverse of :meth:`exp`: ``(v, w)``."""
        w = so3_log(self.R)
        v = np.linalg.solve(_left_jacobian_so3(w), self.t)
        return np.concatenate([v, w])

    def retract(self, xi: Sequence[float]) -> "Pose":
        """Right (camera-frame) increment: ``self @ exp(xi)``."""
        return self @ Pose.exp(xi)

    def interpolate(self, other: "Pose", s: float) -> "Pose":
        """Geodesic interpolation on SO(3) and linear on the centre; s in [0, 1]."""
        dw = Rotation.from_matrix(self.R.T @ other.R).as_rotvec()
        R = self.R @ Rotation.from_rotvec(s * dw).as_matrix()
        return Pose(R, (1.0 - s) * self.t + s * other.t)

    # ------------------------------------------------------------------ errors
    def translation_error(self, other: "Pose") -> float:
        """Distance between the camera centres (same unit as ``t``)."""
        return float(np.linalg.norm(self.t - other.t))

    def rotation_error(self, other: "Pose") -> float:
        """Geodesic angle on SO(3) in radians."""
        c = (np.trace(self.R.T @ other.R) - 1.0) / 2.0
        return float(np.arccos(np.clip(c, -1.0, 1.0)))

    def __repr__(self) -> str:  # pragma: no cover - cosmetics
        rv = Rotation.from_matrix(self.R).as_rotvec()
        return f"Pose(t={np.round(self.t, 5).tolist()}, rotvec={np.round(rv, 4).tolist()})"


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with optional distortion: ``plumb_bob`` ``(k1, k2, p1, p2, k3)`` or, with
    ``model`` ``equidistant`` (a fisheye lens, OpenCV's ``cv2.fisheye`` model), ``(k1, k2, k3, k4)``."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))
    model: str = "plumb_bob"

    def __post_init__(self) -> None:
        vals = np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float64)
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Camera: invalid size {self.width}x{self.height}")
        if not np.all(np.isfinite(vals)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"Camera: invalid intrinsics fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        n = 4 if self.model == "equidistant" else 5
        if self.model not in ("plumb_bob", "equidistant"):
            raise ValueError(f"Camera: unknown distortion model '{self.model}'")
        dist = np.zeros(n) if self.dist is None else np.asarray(self.dist, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(dist)):
            raise ValueError("Camera: non-finite distortion coefficients")
        if dist.size != n:
            raise ValueError(f"Camera: the {self.model} model has {n} distortion coefficients, got {dist.size}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "dist", dist)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int, dist: Iterable[float] | None = None) -> "Camera":
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        return cls(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2], np.zeros(5) if dist is None else np.asarray(dist))

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float) -> "Camera":
        """Square pixels, principal point at the centre, horizontal field of view ``fov_deg``."""
        f = 0.5 * width / np.tan(np.radians(fov_deg) / 2.0)
        return cls(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    @classmethod
    def from_camera_info(cls, msg) -> "Camera":
        """From a ``sensor_msgs/CameraInfo`` (ROS message or any object with its fields).

        ``plumb_bob``, ``rational_polynomial`` without k4..k6, ``equidistant`` (fisheye, 4
        coefficients) or an empty model with zero distortion are accepted. Raises ``ValueError``
        with the reason for anything else.
        """
        K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        model = (msg.distortion_model or "").strip()
        d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
        if model == "equidistant":
            if d.size != 4:
                raise ValueError(f"CameraInfo: equidistant needs 4 coefficients, got {d.size}")
            return cls(int(msg.width), int(msg.height), K[0, 0], K[1, 1], K[0, 2], K[1, 2], d, "equidistant")
        if model not in ("plumb_bob", "rational_polynomial", "") or (model == "" and np.any(d != 0)):
            raise ValueError(f"CameraInfo: unsupported distortion model '{model}'")
        if model == "rational_polynomial":
            if np.any(d[5:] != 0):
                raise ValueError("CameraInfo: rational_polynomial with k4..k6 is not supported")
            d = d[:5]
        if d.size not in (0, 5):
            raise ValueError(f"CameraInfo: plumb_bob needs 5 coefficients, got {d.size}")
        return cls.from_K(K, int(msg.width), int(msg.height), d if d.size else None)

    # ------------------------------------------------------------------ properties
    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    @property
    def has_distortion(self) -> bool:
        return bool(np.any(self.dist != 0))

    # ------------------------------------------------------------------ derived cameras
    def scaled(self, width: int, height: int | None = None) -> "Camera":
        """The same camera at another resolution (pixel centres kept aligned)."""
        if height is None:
            height = int(round(self.height * width / self.width))
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy,
                      (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, self.dist, self.model)

    def centring_pad(self, tolerance: float) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) pixels to add so that the principal point lies within
        ``tolerance`` x the image size of its centre (all 0 when it already does; at most a quarter
        pixel off when padded; negative tolerance: never): a principal point right of the centre
        gets columns on the right, one below it rows at the bottom."""

        def axis(c: float, n: int) -> tuple[int, int]:
            d = c - (n - 1) / 2.0  # > 0: the principal point right of / below the centre
            if tolerance < 0 or abs(d) <= tolerance * n:
                return 0, 0
            k = min(n, int(round(2 * abs(d))))  # pixels added: the offset becomes d -+ k / 2
            return (0, k) if d > 0 else (k, 0)

        (left, right), (top, bottom) = axis(self.cx, self.width), axis(self.cy, self.height)
        return left, right, top, bottom

    def window(self, x0: int, y0: int, x1: int, y1: int) -> "Camera":
        """The camera of the image's pixels [y0:y1, x0:x1] (a crop; beyond the image, padded)."""
        return Camera(x1 - x0, y1 - y0, self.fx, self.fy, self.cx - x0, self.cy - y0, self.dist, self.model)

    def undistorted(self) -> "Camera":
        """The ideal pinhole camera that :meth:`undistort_image` produces (same K)."""
        return Camera(self.width, self.height, self.fx, self.fy, self.cx, self.cy)

    def undistort_image(self, image: np.ndarray) -> np.ndarray:
        """Remove the distortion (plumb_bob or equidistant), keeping K. Returns the input when there is none."""
        if not self.has_distortion:
            return image
        import cv2

        maps = _undistort_maps(self)
        return cv2.remap(image, maps[0], maps[1], interpolation=cv2.INTER_LINEAR)

    # ------------------------------------------------------------------ projection
    def rays(self, dtype=np.float32) -> np.ndarray:
        """Per-pixel directions (H, W, 3) with z = 1 (so ``depth * ray`` is the point)."""
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], -1).astype(dtype)

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project camera-frame points (..., 3) to pixels (..., 2); returns (uv, z)."""
        p = np.asarray(points_cam, dtype=np.float64)
        z = p[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * p[..., 0] / z + self.cx, self.fy * p[..., 1] / z + self.cy], -1)
        return uv, z

    def project_jacobian(self, points_cam: np.ndarray) -> np.ndarray:
        """d(uv)/d(point) of :meth:`project` at camera-frame points (..., 3): (..., 2, 3)."""
        p = np.asarray(points_cam, dtype=np.float64)
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        J = np.zeros(p.shape[:-1] + (2, 3))
        J[..., 0, 0] = self.fx / z
        J[..., 0, 2] = -self.fx * x / z ** 2
        J[..., 1, 1] = self.fy / z
        J[..., 1, 2] = -self.fy * y / z ** 2
        return J

    def project_vjp(self, points_cam: np.ndarray, grad_uv: np.ndarray) -> np.ndarray:
        """``grad_uv`` (..., 2) pulled back through :meth:`project`: ``grad_uv @ project_jacobian`` (..., 3),
        without forming the Jacobian (e.g. an image gradient turned into d(intensity)/d(point))."""
        p = np.asarray(points_cam, dtype=np.float64)
        gu, gv = self.fx * grad_uv[..., 0] / p[..., 2], self.fy * grad_uv[..., 1] / p[..., 2]
        return np.stack([gu, gv, -(gu * p[..., 0] + gv * p[..., 1]) / p[..., 2]], -1)

    def unproject(self, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) of pixels ``uv`` (..., 2) at z-depths ``z`` (...): the inverse of :meth:`project`."""
        uv = np.asarray(uv, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        return np.stack([(uv[..., 0] - self.cx) / self.fx * z, (uv[..., 1] - self.cy) / self.fy * z, z], -1)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
                "cx": self.cx, "cy": self.cy, "dist": self.dist.tolist(), "model": self.model}


_MAP_CACHE: dict = {}


def _undistort_maps(cam: Camera):
    key = (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, tuple(cam.dist), cam.model)
    if key not in _MAP_CACHE:
        import cv2

        if len(_MAP_CACHE) > 16:
            _MAP_CACHE.clear()
        size = (cam.width, cam.height)
        if cam.model == "equidistant":
            _MAP_CACHE[key] = cv2.fisheye.initUndistortRectifyMap(cam.K, cam.dist.reshape(4, 1), np.eye(3), cam.K, size,
                                                                  cv2.CV_32FC1)
        else:
            _MAP_CACHE[key] = cv2.initUndistortRectifyMap(cam.K, cam.dist, None, cam.K, size, cv2.CV_32FC1)
    return _MAP_CACHE[key]


# ---------------------------------------------------------------------- torch SE(3)
def so3_exp_torch(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable (also at w = 0). ``w``: (..., 3) -> (..., 3, 3)."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    W = _hat_torch(w)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(W.shape)
    return eye + a * W + b * (W @ W)


def se3_exp_torch(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SE(3) exponential of ``xi = (v, w)`` (..., 6) -> (R (..., 3, 3), t (..., 3)); matches :meth:`Pose.exp`."""
    v, w = xi[..., :3], xi[..., 3:]
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    W = _hat_torch(w)
    small = theta2 < 1e-8
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (theta - torch.sin(theta)) / (theta2 * theta).clamp_min(1e-36))
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(W.shape)
    V = eye + b * W + c * (W @ W)
    return so3_exp_torch(w), (V @ v[..., None])[..., 0]


def _hat_torch(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(w[..., 0])
    return torch.stack([
        torch.stack([z, -w[..., 2], w[..., 1]], -1),
        torch.stack([w[..., 2], z, -w[..., 0]], -1),
        torch.stack([-w[..., 1], w[..., 0], z], -1),
    ], -2)
