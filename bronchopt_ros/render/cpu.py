"""CPU renderer: Embree first-hit ray casting + the shared torch projection maths.

Visibility comes from :class:`~bronchopt_ros.render.raycast.Raycaster` (one ray per pixel);
depth, normals and Jacobians from :mod:`bronchopt_ros.render.projection` in float64.
Hits nearer than ``near`` or farther than ``far``, hits on zero-area triangles and grazing
hits are invalid pixels; a camera outside the lumen gives ``inside == False`` (no error);
no hits at all give an all-invalid render.

    r = CpuRenderer(vertices_m, faces, near=1e-4, far=0.5)
    out = r.render(camera, pose, jacobian=True)
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry import Camera, Pose
from .base import Renderer
from .raycast import Raycaster

__all__ = ["CpuRenderer"]


class CpuRenderer(Renderer):
    name = "cpu"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, *, near: float = 1e-4, far: float = 0.5,
                 device=None):
        super().__init__(vertices, faces, near=near, far=far, device="cpu")
        self.raycaster = Raycaster(self.vertices, self.faces)
        self._rays_np: dict = {}

    def _rays_flat(self, camera: Camera) -> np.ndarray:
        key = (camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy)
        if key not in self._rays_np:
            if len(self._rays_np) > 16:
                self._rays_np.clear()
            self._rays_np[key] = camera.rays(np.float64).reshape(-1, 3)
        return self._rays_np[key]

    def depth_at(self, camera: Camera, pose: Pose, uv: np.ndarray) -> np.ndarray:
        """One ray per pixel position (sub-pixel, no image rendered)."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        rays = np.stack([(uv[:, 0] - camera.cx) / camera.fx, (uv[:, 1] - camera.cy) / camera.fy,
                         np.ones(len(uv))], axis=1)
        tri, z = self.raycaster.cast_rays(np.broadcast_to(pose.t, rays.shape), rays @ pose.R.T)
        ok = (tri >= 0) & (z > self.near) & ((z <= self.far) if self.far > 0 else True)
        ok[ok] &= self._face_ok.numpy()[tri[ok]]
        return np.where(ok, z, 0.0)

    def cast(self, camera: Camera, pose: Pose) -> torch.Tensor:
        dirs = self._rays_flat(camera) @ pose.R.T
        tri, _ = self.raycaster.cast_rays(np.broadcast_to(pose.t, dirs.shape), dirs)
        return torch.from_numpy(tri.reshape(camera.height, camera.width))
