"""Procedural airway meshes and cameras shared by the render / optimise / metrics tests.

``y_airway(voxel)`` is a closed Y-shaped lumen (metres, outward normals): a 15 mm wide
trachea along -z from z = +60 mm to the carina at z = 0, and two main bronchi (11 mm and
10 mm wide, 30 mm long) leaving at 35 and 25 deg. Built as the marching-cubes surface of a
capsule-union distance field (skimage), so it is smooth and watertight.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from bronchopt_ros.airway import Airway
from bronchopt_ros.geometry import Camera, Pose

MM = 1e-3
# (start, end, radius) in mm
Y_SEGMENTS = [
    ((0.0, 0.0, 60.0), (0.0, 0.0, 0.0), 7.5),
    ((0.0, 0.0, 0.0), (30.0 * np.sin(np.radians(35)), 0.0, -30.0 * np.cos(np.radians(35))), 5.5),
    ((0.0, 0.0, 0.0), (-30.0 * np.sin(np.radians(25)), 2.0, -30.0 * np.cos(np.radians(25))), 5.0),
]


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    s = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + s[..., None] * ab), axis=-1)


@lru_cache(maxsize=4)
def y_airway(voxel_mm: float = 0.75) -> Airway:
    """The Y-shaped test airway (see the module docstring); ``voxel_mm`` sets the mesh density
    (0.75 mm: ~25k faces)."""
    from skimage.measure import marching_cubes

    lo = np.array([-30.0, -15.0, -40.0])
    hi = np.array([30.0, 15.0, 70.0])
    axes = [np.arange(lo[i], hi[i] + voxel_mm, voxel_mm) for i in range(3)]
    P = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    field = np.full(P.shape[:3], -np.inf)
    for a, b, r in Y_SEGMENTS:
        field = np.maximum(field, r - _segment_distance(P, np.array(a), np.array(b)))
    # Outside on the grid's border, so the surface is closed.
    field[[0, -1], :, :] = -1.0
    field[:, [0, -1], :] = -1.0
    field[:, :, [0, -1]] = -1.0
    verts, faces, _, _ = marching_cubes(field.astype(np.float32), 0.0123 * voxel_mm, spacing=(voxel_mm,) * 3)
    verts = (verts + lo) * MM
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return Airway(np.asarray(mesh.vertices), np.asarray(mesh.faces))


def bench_camera(size: int = 64) -> Camera:
    """The benchmark's camera (200 px, fx ~ 110) scaled to ``size`` px."""
    return Camera(200, 200, 110.21, 110.31, 100.58, 103.69).scaled(size)


def trachea_pose(z_mm: float = 35.0) -> Pose:
    """Camera on the trachea's axis ``z_mm`` above the carina, looking down at it."""
    return Pose.look_at((0.0, 0.0, z_mm * MM), (0.0, 0.0, 0.0), up=(1.0, 0.0, 0.0))


def moller_trumbore(origin: np.ndarray, dirs: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force first hit of rays (N, 3) from ``origin`` against all triangles (F, 3, 3).

    Returns (triangle index or -1, ray parameter t). Independent of Embree, for checks.
    """
    v0, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    best_t = np.full(len(dirs), np.inf)
    best_i = np.full(len(dirs), -1)
    s = origin - v0  # (F, 3)
    q = np.cross(s, e1)  # (F, 3)
    for k in range(0, len(dirs), 256):
        d = dirs[k:k + 256]  # (n, 3)
        p = np.cross(d[:, None, :], e2[None])  # (n, F, 3)
        det = np.einsum("nfi,fi->nf", p, e1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            u = np.einsum("nfi,fi->nf", p, s) * inv
            v = np.einsum("ni,fi->nf", d, q) * inv
            t = np.einsum("fi,fi->f", e2, q)[None] * inv
        ok = (np.abs(det) > 1e-20) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        t = np.where(ok, t, np.inf)
        i = np.argmin(t, axis=1)
        tm = t[np.arange(len(d)), i]
        best_t[k:k + 256] = tm
        best_i[k:k + 256] = np.where(np.isfinite(tm), i, -1)
    return best_i, best_t


@contextmanager
def torch_threads(n: int):
    """Temporarily run torch with ``n`` intra-op threads. The renderer's and optimisers' ops are
    small (1e4 elements); on the shared 2-core machine one thread is 2-5x faster than two."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
