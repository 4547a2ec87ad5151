"""CUDA renderer: nvdiffrast rasterisation for visibility + the shared projection maths.

Only imported by :func:`~bronchopt_ros.render.base.make_renderer` when CUDA and nvdiffrast are
available (or when asked for explicitly); nothing here runs on a CPU-only machine.

* :meth:`NvdiffrastRenderer.cast` rasterises the mesh (``dr.rasterize`` on a
  ``dr.RasterizeCudaContext``, clip-space vertices from
  :func:`~bronchopt_ros.render.projection.clip_space_vertices`) and reads the hit triangle
  from the ``triangle_id`` channel (offset by one; 0 = background). Depth, normals and
  Jacobians then come from :mod:`~bronchopt_ros.render.projection` exactly as on the CPU, so
  both backends agree to float precision where they see the same triangle.
* :meth:`NvdiffrastRenderer.raster_depth` interpolates the camera-space z with
  ``dr.interpolate`` (perspective-correct, equal to the plane depth), optionally through
  ``dr.antialias`` so that gradients also flow through silhouettes; with ``xi`` it is
  differentiable in the pose through nvdiffrast itself (visibility recomputed, not frozen).

Differences from the CPU backend: the rasteriser clips triangles at ``near`` (what lies behind
a clipped triangle shows through) where the ray caster invalidates a pixel whose first hit is
nearer than ``near``; with the default ``near = 0.1 mm`` this only matters when the camera
touches the wall. Rasterisation samples the pixel centre, like the ray caster, so edge pixels
can pick the neighbouring triangle of a shared edge.
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry import Camera, Pose, se3_exp_torch
from .base import Renderer
from .projection import gl_projection_matrix

__all__ = ["NvdiffrastRenderer"]


class NvdiffrastRenderer(Renderer):
    name = "nvdiffrast"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, *, near: float = 1e-4, far: float = 0.5,
                 device="cuda"):
        import nvdiffrast.torch as dr  # guarded: only here

        super().__init__(vertices, faces, near=near, far=far, device=device)
        if self.device.type != "cuda":
            raise ValueError(f"nvdiffrast needs a CUDA device, got {self.device}")
        self._dr = dr
        self._ctx = dr.RasterizeCudaContext(device=self.device)
        # Vertices relative to their centre (float32 clip space keeps precision near the camera).
        self._centre = self.vertices.mean(0)
        self._v = torch.as_tensor(self.vertices - self._centre, dtype=torch.float64, device=self.device)
        self._tri = torch.as_tensor(self.faces, dtype=torch.int32, device=self.device).contiguous()

    # ------------------------------------------------------------------ rasterisation
    def _camera_vertices(self, pose: Pose, xi: torch.Tensor | None = None) -> torch.Tensor:
        """Vertices in the camera frame of ``pose.retract(xi)`` (float64; differentiable in xi)."""
        R = torch.as_tensor(pose.R, dtype=torch.float64, device=self.device)
        t = torch.as_tensor(pose.t - self._centre, dtype=torch.float64, device=self.device)
        vc = (self._v - t) @ R  # R^T (p - t)
        if xi is not None:
            Rx, tx = se3_exp_torch(xi.to(device=self.device, dtype=torch.float64))
            vc = (vc - tx) @ Rx
        return vc

    def _rasterize(self, camera: Camera, vc: torch.Tensor):
        P = torch.as_tensor(gl_projection_matrix(camera, self.near, self.far), dtype=vc.dtype, device=self.device)
        clip = torch.cat([vc, torch.ones_like(vc[:, :1])], -1) @ P.T
        clip = clip.float()[None].contiguous()
        rast, _ = self._dr.rasterize(self._ctx, clip, self._tri, (camera.height, camera.width), grad_db=False)
        return rast, clip

    def cast(self, camera: Camera, pose: Pose) -> torch.Tensor:
        rast, _ = self._rasterize(camera, self._camera_vertices(pose))
        return rast[0, ..., 3].round().long() - 1  # triangle_id is offset by one

    def raster_depth(self, camera: Camera, pose: Pose, xi: torch.Tensor | None = None,
                     antialias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """z-depth (H, W) float32 interpolated by nvdiffrast and the coverage mask (H, W).

        With ``xi`` the depth is differentiable in it through the rasteriser (and through the
        silhouettes when ``antialias``); visibility is recomputed at ``pose.retract(xi)``.
        """
        vc = self._camera_vertices(pose, xi)
        rast, clip = self._rasterize(camera, vc)
        z, _ = self._dr.interpolate(vc[:, 2:3].float()[None].contiguous(), rast, self._tri)
        if antialias:
            z = self._dr.antialias(z, rast, clip, self._tri)
        valid = rast[0, ..., 3] > 0
        return torch.where(valid, z[0, ..., 0], torch.zeros_like(z[0, ..., 0])), valid
