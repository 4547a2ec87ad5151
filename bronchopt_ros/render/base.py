"""The renderer interface: depth (and its pose derivatives) of the airway seen from a pose.

A backend only finds the triangle each pixel sees (:meth:`Renderer.cast`); everything
else (depth, normals, Jacobians, differentiable depth) comes from the shared maths in
:mod:`bronchopt_ros.render.projection`, so every backend gives the same numbers.

Public API (stable)::

    r = make_renderer(airway, backend="auto" | "cpu" | "nvdiffrast", device=None)
    out = r.render(camera, pose, normals=True, jacobian=False)   # -> DepthRender
    f = r.depth_fn(camera, pose)        # DepthFunction: f(xi) -> depth (H, W), autograd-able
    planes, inside_fraction = r.hit_planes(camera, pose)          # the linearisation

``DepthRender``: ``depth`` float32 (H, W) metres (0 where invalid), ``valid`` bool (H, W),
``normals`` float32 (H, W, 3) camera frame (towards the camera; 0 where invalid) or None,
``jacobian`` float32 (H*W, 6) d depth / d xi (0 rows where invalid) or None, ``tri`` int64
(H, W) hit triangle (-1 where invalid), ``inside_fraction`` the share of valid hits seeing
the wall from the lumen side and ``inside`` (more than half do, and something was hit),
``planes`` the float64 :class:`HitPlanes` the render was made from.

Increments ``xi = (v, w)`` are right (camera-frame) increments: ``pose.retract(xi)``.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import Camera, Pose
from .projection import (HitPlanes, depth_jacobian, dot, hit_planes, plane_depth, plane_normals,
                         to_image, triangle_planes)

__all__ = ["DepthRender", "DepthFunction", "Renderer", "make_renderer"]

log = logging.getLogger(__name__)


@dataclass
class DepthRender:
    """One rendered depth map (see the module docstring)."""

    depth: torch.Tensor
    valid: torch.Tensor
    normals: torch.Tensor | None
    jacobian: torch.Tensor | None
    tri: torch.Tensor | None
    inside_fraction: float
    planes: HitPlanes | None = None

    @property
    def inside(self) -> bool:
        """True when the camera sees the airway wall from the lumen side."""
        return bool(self.valid.any()) and self.inside_fraction > 0.5

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.float().mean())


@dataclass
class DepthFunction:
    """Depth as a differentiable function of a right increment ``xi`` (6,), with the
    visibility (hit triangles) frozen at ``xi = 0``.

    ``f(xi)`` -> depth image (H, W) in ``dtype`` (0 where invalid); ``f.values(xi)`` -> the
    (M,) depths of the valid pixels (``f.planes.index`` gives their flat pixel indices);
    ``f.valid`` the (H, W) mask.
    """

    planes: HitPlanes
    dtype: torch.dtype = torch.float32

    @property
    def valid(self) -> torch.Tensor:
        return self.planes.valid

    def values(self, xi: torch.Tensor | None = None) -> torch.Tensor:
        return plane_depth(self.planes, xi).to(self.dtype)

    def __call__(self, xi: torch.Tensor | None = None) -> torch.Tensor:
        return to_image(self.planes, self.values(xi))


class Renderer(ABC):
    """Depth renderer of a fixed triangle mesh (CT frame, metres).

    Subclasses implement :meth:`cast`; ``near``/``far`` (metres) bound the valid depths.
    """

    name = "base"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, *, near: float = 1e-4, far: float = 0.5,
                 device=None):
        vertices = np.ascontiguousarray(vertices, dtype=np.float64).reshape(-1, 3)
        faces = np.ascontiguousarray(faces, dtype=np.int64).reshape(-1, 3)
        if len(faces) == 0:
            raise ValueError("Renderer: the mesh has no triangles")
        self.vertices, self.faces = vertices, faces
        self.near, self.far = float(near), float(far)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        n, d, ok = triangle_planes(vertices[faces])
        # Orient the face normals out of the lumen (positive enclosed volume): seeing a face
        # from its back means looking at the wall from inside.
        if _signed_volume(vertices, faces) < 0:
            n, d = -n, -d
        self._face_normal = torch.as_tensor(n, device=self.device)
        self._face_offset = torch.as_tensor(d, device=self.device)
        self._face_ok = torch.as_tensor(ok, device=self.device)
        self._rays: dict = {}

    # ------------------------------------------------------------------ backend
    @abstractmethod
    def cast(self, camera: Camera, pose: Pose) -> torch.Tensor:
        """Hit triangle id per pixel, int64 (H, W), -1 for none (on ``self.device``)."""

    # ------------------------------------------------------------------ shared
    def rays(self, camera: Camera) -> torch.Tensor:
        """Unit-z camera rays (H, W, 3) float64 on the renderer's device (cached)."""
        key = (camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy)
        if key not in self._rays:
            if len(self._rays) > 16:
                self._rays.clear()
            self._rays[key] = torch.as_tensor(camera.rays(np.float64), device=self.device)
        return self._rays[key]

    def hit_planes(self, camera: Camera, pose: Pose) -> tuple[HitPlanes, float]:
        """The linearisation of the render at ``pose`` and the inside fraction of its hits."""
        tri = self.cast(camera, pose)
        rays = self.rays(camera)
        planes = hit_planes(rays, tri, self._face_normal, self._face_offset, pose, face_ok=self._face_ok,
                            near=self.near, device=self.device)
        z = planes.depth0()
        if self.far > 0 and planes.count and bool((z > self.far).any()):
            planes = planes.subset(z <= self.far)
        if planes.count == 0:
            return planes, 0.0
        # Outward normal pointing away from the camera (n_out . r > 0): seen from inside.
        R = torch.as_tensor(pose.R, dtype=planes.rays.dtype, device=self.device)
        n_out = self._face_normal[planes.tri] @ R
        away = dot(n_out, planes.rays) > 0
        return planes, float(away.double().mean())

    def render(self, camera: Camera, pose: Pose, *, normals: bool = True, jacobian: bool = False) -> DepthRender:
        """Depth (and optionally normals and d depth / d xi) at ``pose``."""
        planes, inside = self.hit_planes(camera, pose)
        depth = to_image(planes, planes.depth0().float())
        nrm = to_image(planes, plane_normals(planes).float()) if normals else None
        jac = to_image(planes, depth_jacobian(planes).float()).reshape(-1, 6) if jacobian else None
        tri = to_image(planes, planes.tri, fill=-1)
        return DepthRender(depth=depth, valid=planes.valid, normals=nrm, jacobian=jac, tri=tri,
                           inside_fraction=inside, planes=planes)

    def depth_at(self, camera: Camera, pose: Pose, uv: np.ndarray) -> np.ndarray:
        """Z-depth (metres, 0 = no valid hit) seen through pixel positions ``uv`` (N, 2) of
        ``camera`` at ``pose``. This default renders the whole image and reads the nearest pixel;
        backends that can cast single rays override it."""
        d = self.render(camera, pose, normals=False).depth.detach().cpu().numpy()
        u = np.clip(np.round(uv[:, 0]).astype(int), 0, camera.width - 1)
        v = np.clip(np.round(uv[:, 1]).astype(int), 0, camera.height - 1)
        return d[v, u].astype(np.float64)

    def depth_fn(self, camera: Camera, pose: Pose, dtype: torch.dtype = torch.float32) -> DepthFunction:
        """Depth as a differentiable function of ``xi`` around ``pose`` (visibility frozen)."""
        return DepthFunction(self.hit_planes(camera, pose)[0], dtype)

    def inside(self, camera: Camera, pose: Pose) -> bool:
        """Whether the camera at ``pose`` looks at the wall from within the lumen."""
        planes, frac = self.hit_planes(camera, pose)
        return planes.count > 0 and frac > 0.5


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = vertices - vertices.mean(0)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _mesh_arrays(airway) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(airway, tuple):
        return airway
    return np.asarray(airway.vertices), np.asarray(airway.faces)


def nvdiffrast_available() -> bool:
    """CUDA present and nvdiffrast importable."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension build
        return False
    return True


def make_renderer(airway, backend: str = "auto", device=None, *, near: float = 1e-4, far: float = 0.5) -> Renderer:
    """A renderer for ``airway`` (an :class:`~bronchopt_ros.airway.Airway`, a trimesh, or a
    ``(vertices, faces)`` pair; metres).

    ``backend``: ``"cpu"`` (Embree), ``"nvdiffrast"`` (CUDA; raises if unavailable) or
    ``"auto"`` (nvdiffrast when CUDA and nvdiffrast import, else CPU). Logs the choice.
    """
    vertices, faces = _mesh_arrays(airway)
    if backend not in ("auto", "cpu", "nvdiffrast"):
        raise ValueError(f"unknown renderer backend '{backend}' (auto, cpu, nvdiffrast)")
    if backend == "auto":
        backend = "nvdiffrast" if nvdiffrast_available() else "cpu"
    if backend == "nvdiffrast":
        from .nvdiffrast_backend import NvdiffrastRenderer

        r: Renderer = NvdiffrastRenderer(vertices, faces, near=near, far=far, device=device or "cuda")
    else:
        from .cpu import CpuRenderer

        r = CpuRenderer(vertices, faces, near=near, far=far)
    log.info("renderer: %s backend, %d faces", r.name, len(faces))
    return r
