"""First-hit ray casting of a triangle mesh with Embree (embreex).

This is the visibility half of the CPU renderer and the simulator's camera:
for every pixel it finds the first triangle the ray hits. Depth as a
*differentiable* function of the pose is computed from these hits in torch
(see :mod:`bronchopt_ros.render.projection` and
:mod:`bronchopt_ros.render.cpu`).

Calls embreex's scene directly (about 2x faster than trimesh's
``intersects_id``, ../shared/REFERENCE.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from embreex import mesh_construction, rtcore_scene

from ..geometry import Camera, Pose

__all__ = ["RayHits", "Raycaster"]


@dataclass
class RayHits:
    """The first hit of every pixel's ray. Arrays are (H, W[, 3]).

    ``tri`` is the hit triangle index or -1 for a miss (or a hit nearer than
    the near plane). ``depth`` is z-depth in metres (0 where missed).
    ``normal_cam`` is the unit geometric normal of the hit triangle in the
    camera frame, oriented towards the camera. ``facing_away`` is True where
    the mesh's own normal points away from the camera (the normal case when
    looking at the lumen wall from inside; False means the camera sees the
    outside of the surface).
    """

    tri: np.ndarray
    depth: np.ndarray
    point_ct: np.ndarray
    normal_cam: np.ndarray
    facing_away: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.tri >= 0

    def inside_fraction(self) -> float:
        """Share of valid hits that see the surface from the lumen side."""
        v = self.valid
        return float(self.facing_away[v].mean()) if v.any() else 0.0


class Raycaster:
    """Embree scene of a triangle mesh (vertices in metres, CT frame)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        faces = np.ascontiguousarray(faces, dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError("Raycaster: the mesh has no triangles")
        self.vertices = vertices
        self.faces = faces
        tris = vertices[faces]
        n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        area2 = np.linalg.norm(n, axis=1)
        # Degenerate triangles have no normal; they can still be hit at their edges.
        self.face_normals = n / np.maximum(area2, 1e-30)[:, None]
        self.degenerate = area2 < 1e-18
        self._scene = rtcore_scene.EmbreeScene()
        # Embree works in float32: shift to the mesh centre to keep precision.
        self._offset = vertices.mean(axis=0)
        mesh_construction.TriangleMesh(self._scene, (tris - self._offset).astype(np.float32))

    def cast_rays(self, origins: np.ndarray, directions: np.ndarray,
                  tfar: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cast arbitrary rays (N, 3) in the CT frame. Returns (triangle index or -1, distance in
        units of the direction's length). ``tfar`` (scalar or (N,)) limits the ray to a segment:
        hits beyond ``tfar`` direction lengths are misses."""
        o = np.ascontiguousarray(origins - self._offset, dtype=np.float32)
        d = np.ascontiguousarray(directions, dtype=np.float32)
        if tfar is None:
            r = self._scene.run(o, d, output=1)
        else:
            dists = np.array(np.broadcast_to(np.asarray(tfar, dtype=np.float32), (len(o),)), dtype=np.float32)
            r = self._scene.run(o, d, dists=dists, output=1)
        tri = r["primID"].astype(np.int64)
        tri[r["geomID"] < 0] = -1
        return tri, r["tfar"].astype(np.float64)

    def cast(self, camera: Camera, pose: Pose, near: float = 1e-4) -> RayHits:
        """Cast one ray per pixel from ``pose`` (camera -> CT) through ``camera`` (no distortion)."""
        rays = camera.rays(np.float64).reshape(-1, 3)  # z = 1, so tfar is z-depth
        dirs = rays @ pose.R.T
        origins = np.broadcast_to(pose.t, dirs.shape)
        tri, z = self.cast_rays(origins, dirs)
        tri[(tri >= 0) & (z < near)] = -1
        valid = tri >= 0
        H, W = camera.height, camera.width
        depth = np.where(valid, z, 0.0)
        point = pose.t + dirs * depth[:, None]
        n_ct = self.face_normals[np.where(valid, tri, 0)]
        facing_away = np.einsum("ij,ij->i", n_ct, dirs) > 0
        n_cam = n_ct @ pose.R
        n_cam = np.where(facing_away[:, None], -n_cam, n_cam)  # towards the camera
        n_cam[~valid] = 0.0
        return RayHits(
            tri=tri.reshape(H, W).astype(np.int32),
            depth=depth.reshape(H, W).astype(np.float32),
            point_ct=point.reshape(H, W, 3),
            normal_cam=n_cam.reshape(H, W, 3).astype(np.float32),
            facing_away=(facing_away & valid).reshape(H, W),
        )

    def contains(self, points: np.ndarray) -> np.ndarray:
        """True for points inside the closed surface (the lumen), by ray parity along 3 axes
        (majority vote, robust to grazing hits)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        votes = np.zeros(len(points), dtype=np.int64)
        dirs = np.array([[0.577, 0.577, 0.579], [-0.6, 0.31, 0.737], [0.21, -0.83, -0.516]])
        for d in dirs:
            d = d / np.linalg.norm(d)
            votes += self._count_crossings(points, d) % 2
        return votes >= 2

    def _count_crossings(self, points: np.ndarray, d: np.ndarray, max_hits: int = 64) -> np.ndarray:
        count = np.zeros(len(points), dtype=np.int64)
        origin = points.copy()
        active = np.ones(len(points), dtype=bool)
        dirs = np.broadcast_to(d, points.shape)
        for _ in range(max_hits):
            if not active.any():
                break
            idx = np.flatnonzero(active)
            tri, t = self.cast_rays(origin[idx], dirs[idx])
            hit = tri >= 0
            count[idx[hit]] += 1
            active[idx[~hit]] = False
            step = np.maximum(t[hit], 0.0) + 1e-7
            origin[idx[hit]] = origin[idx[hit]] + dirs[idx[hit]] * step[:, None]
        return count
