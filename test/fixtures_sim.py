"""A small synthetic airway with its centerline, for the simulator tests (fast, no CT).

``small_airway()`` is a closed lumen (metres, outward normals) made of a 14 mm wide trachea
along -z from z = +50 mm to the carina at z = 0, a right main bronchus (+x, 10 mm wide) that
splits again into two 7 mm bronchi, and a left main bronchus (9 mm wide). The surface is the
marching-cubes iso-surface of the union of spheres centred on the centerline samples (skimage),
so the centerline and its radii are exact for the mesh up to the voxel size.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from bronchopt_ros.airway import Airway, Branch, Centerline
from bronchopt_ros.geometry import Camera

MM = 1e-3


def _line(a, b, spacing_mm: float = 0.5) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = max(2, int(np.ceil(np.linalg.norm(b - a) / spacing_mm)) + 1)
    return a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)


def _dir(theta_deg: float, phi_deg: float = 0.0) -> np.ndarray:
    """Unit vector at ``theta`` from -z, turned by ``phi`` about z from +x."""
    th, ph = np.radians(theta_deg), np.radians(phi_deg)
    return np.array([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), -np.cos(th)])


@lru_cache(maxsize=1)
def small_centerline() -> Centerline:
    """The fixture's branch graph (metres): 0 trachea, 1 right main, 2 left main, 3-4 right
    daughters."""
    carina = np.zeros(3)
    r_end = carina + 28.0 * _dir(35.0)
    l_end = carina + 32.0 * _dir(40.0, 180.0)
    specs = [
        (0, -1, 0, (0.0, 0.0, 50.0), carina, 7.0),
        (1, 0, 1, carina, r_end, 5.0),
        (2, 0, 1, carina, l_end, 4.5),
        (3, 1, 2, r_end, r_end + 22.0 * _dir(60.0, 20.0), 3.5),
        (4, 1, 2, r_end, r_end + 20.0 * _dir(15.0, 90.0), 3.5),
    ]
    branches = []
    for bid, parent, gen, a, b, r in specs:
        pts = _line(a, b)
        branches.append(Branch(bid, parent, gen, pts * MM, np.full(len(pts), r * MM)))
    return Centerline(branches)


@lru_cache(maxsize=2)
def small_airway(voxel_mm: float = 0.8) -> Airway:
    """The fixture's lumen mesh with :func:`small_centerline` attached (~20k faces at 0.8 mm)."""
    import trimesh
    from skimage.measure import marching_cubes

    cl = small_centerline()
    pts, rad, _ = cl.all_points()
    pts, rad = pts / MM, rad / MM
    lo = pts.min(0) - rad.max() - 3.0
    hi = pts.max(0) + rad.max() + 3.0
    axes = [np.arange(lo[i], hi[i] + voxel_mm, voxel_mm) for i in range(3)]
    P = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    d, idx = cKDTree(pts).query(P, k=12, distance_upper_bound=rad.max() + 4 * voxel_mm)
    idx = np.minimum(idx, len(pts) - 1)
    field = np.max(np.where(np.isfinite(d), rad[idx] - d, -10.0), axis=1)
    field = field.reshape([len(a) for a in axes])
    field[[0, -1], :, :] = -1.0
    field[:, [0, -1], :] = -1.0
    field[:, :, [0, -1]] = -1.0
    verts, faces, _, _ = marching_cubes(field.astype(np.float32), 0.0, spacing=(voxel_mm,) * 3)
    mesh = trimesh.Trimesh((verts + lo) * MM, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return Airway(np.asarray(mesh.vertices), np.asarray(mesh.faces), cl)


def small_camera(size: int = 64) -> Camera:
    """The paper's benchmark camera (200 px, fx ~ 110) scaled to ``size`` px."""
    return Camera(200, 200, 110.2, 110.3, 100.6, 103.7).scaled(size)
