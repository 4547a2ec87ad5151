"""Synthetic anatomy: Kitaoka-style tree, its CT and the lumen mesh extracted from that CT."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from bronchopt_ros.render.raycast import Raycaster
from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy, generate_centerline

SMALL = AnatomyParams(generations=3, voxel_mm=0.9)


@pytest.fixture(scope="module")
def small():
    return generate_anatomy(7, SMALL)


def _unit(v):
    return v / np.linalg.norm(v)


def tube_signed_distance(centerline, points_m: np.ndarray, extend_root_mm: float = 30.0) -> np.ndarray:
    """Signed distance (mm, negative inside) of points to the union of the centerline's tubes."""
    pts_mm = points_m * 1e3
    best = np.full(len(pts_mm), np.inf)
    for b in centerline.branches:
        p, r = b.points * 1e3, b.radii * 1e3
        if b.parent < 0:  # the CT continues the trachea beyond its open end
            d = _unit(p[0] - p[1])
            p, r = np.vstack([p[0] + d * extend_root_mm, p]), np.r_[r[0], r]
        s = np.r_[0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]
        si = np.arange(0, s[-1] + 0.05, 0.05)
        dense = np.stack([np.interp(si, s, p[:, k]) for k in range(3)], 1)
        dist, i = cKDTree(dense).query(pts_mm)
        best = np.minimum(best, dist - np.interp(si, s, r)[i])
    return best


def test_reproducible_per_seed_and_different_across_seeds():
    a, b, c = generate_centerline(3), generate_centerline(3), generate_centerline(4)
    assert len(a) == len(b)
    for x, y in zip(a.branches, b.branches):
        np.testing.assert_array_equal(x.points, y.points)
        np.testing.assert_array_equal(x.radii, y.radii)
    pa, _, _ = a.all_points()
    pc, _, _ = c.all_points()
    assert len(pa) != len(pc) or not np.allclose(pa, pc)
    assert abs(a.root.length - c.root.length) > 1e-4 or abs(a.root.radii[0] - c.root.radii[0]) > 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_follows_kitaoka_rules(seed):
    p = AnatomyParams()
    cl = generate_centerline(seed, p)
    gens = [b.generation for b in cl.branches]
    assert max(gens) >= 5
    root = cl.root
    assert 85e-3 < root.length < 140e-3
    assert 14e-3 < 2 * root.radii[0] < 22e-3
    ratios, angles, len_ratio, plane_turns = [], [], [], []
    for b in cl.branches:
        kids = cl.children(b.id)
        assert len(kids) <= 2
        len_ratio.append(b.length / (2 * b.radii[0]))
        # points about 1 mm apart
        step = np.linalg.norm(np.diff(b.points, axis=0), axis=1)
        assert np.all(step < 1.2e-3) and np.all(step > 0.3e-3)
        u = _unit(b.points[-1] - b.points[-2])
        for k in kids:
            np.testing.assert_allclose(k.points[0], b.points[-1])
            ratios.append(k.radii[0] / b.radii[0])
            angles.append(np.degrees(np.arccos(np.clip(_unit(k.points[1] - k.points[0]) @ u, -1, 1))))
        if len(kids) == 2 and b.generation >= 2:
            # this bifurcation's plane vs the one that made b (the main bronchi are the
            # documented exception: their upper-lobe branch leaves in the carina's plane)
            par = cl.branch(b.parent)
            sib = [s for s in cl.children(par.id)]
            if len(sib) == 2:
                n_par = _unit(np.cross(sib[0].points[1] - sib[0].points[0], sib[1].points[1] - sib[1].points[0]))
                n_b = _unit(np.cross(kids[0].points[1] - kids[0].points[0], kids[1].points[1] - kids[1].points[0]))
                plane_turns.append(np.degrees(np.arccos(abs(n_par @ n_b))))
    ratios, angles = np.array(ratios), np.array(angles)
    # daughter / parent diameter: r^(1/2.8) with r around 0.5 -> ~0.78 (Murray's 2^(-1/3) ~ 0.79)
    assert 0.7 < ratios.mean() < 0.88
    assert np.all((ratios > 0.45) & (ratios < 1.05))
    assert 25 < angles.mean() < 50 and angles.max() < 80
    assert 2.0 < np.median(len_ratio[1:]) < 4.5
    assert np.mean(plane_turns) > 60 and np.median(plane_turns) > 65  # ~90 deg turns (+ jitter)
    # the right main bronchus (larger share) goes to +x, the left one to -x
    mains = sorted(cl.children(root.id), key=lambda k: k.points[-1, 0])
    assert mains[0].points[-1, 0] < root.points[-1, 0] < mains[1].points[-1, 0]
    assert mains[1].radii[0] > mains[0].radii[0]


def test_branches_do_not_intersect():
    cl = generate_centerline(5)
    related = {}
    for b in cl.branches:
        related[b.id] = {b.id, b.parent} | {k.id for k in cl.children(b.id)}
        if b.parent >= 0:
            related[b.id] |= {s.id for s in cl.children(b.parent)}
    for i, a in enumerate(cl.branches):
        for b in cl.branches[i + 1:]:
            if b.id in related[a.id]:
                continue
            d = np.linalg.norm(a.points[:, None] - b.points[None], axis=2).min()
            assert d > a.radii.max() + b.radii.max(), (a.id, b.id)


def test_mesh_recovers_the_tube_surface_within_a_voxel(small):
    v = small.airway.vertices
    top = v[:, 2] > small.centerline.root.points[0, 2] - 2e-3  # the cut at the top slice
    err = np.abs(tube_signed_distance(small.centerline, v[~top]))
    vox = SMALL.voxel_mm
    # the brief asks for < 1 voxel; the isosurface of the CT does much better
    assert np.median(err) < 0.3 * vox
    assert np.percentile(err, 95) < 0.75 * vox


def test_mesh_is_a_closed_lumen_around_the_centerline(small):
    import trimesh

    m = trimesh.Trimesh(small.airway.vertices, small.airway.faces, process=False)
    assert m.is_watertight
    assert m.volume > 0  # normals point out of the lumen
    rc = Raycaster(small.airway.vertices, small.airway.faces)
    p, _, _ = small.centerline.all_points()
    assert rc.contains(p[::3]).mean() > 0.98
    # and points well outside every tube are outside the mesh
    far = p[::7] + np.array([0.05, 0.05, 0.0])
    d = tube_signed_distance(small.centerline, far)
    assert not rc.contains(far[d > 3.0]).any()
    # a camera on the trachea axis sees the lumen wall from inside
    from bronchopt_ros.geometry import Camera, Pose

    root = small.centerline.root
    z = _unit(root.points[-1] - root.points[0])
    x = _unit(np.cross(z, [0.0, 1.0, 0.0]))
    R = np.stack([x, np.cross(z, x), z], axis=1)
    hits = rc.cast(Camera(64, 64, 40.0, 40.0, 31.5, 31.5), Pose(R, root.points[20]))
    assert hits.valid.mean() > 0.95 and hits.inside_fraction() > 0.98


def test_anatomy_carries_ct_and_exact_centerline(small):
    ct = small.ct
    assert ct.hu.dtype == np.int16
    np.testing.assert_allclose(ct.spacing_mm, SMALL.voxel_mm)
    assert small.seed == 7 and small.params.generations == 3
    assert max(b.generation for b in small.centerline.branches) == 3
    again = generate_anatomy(7, SMALL)
    np.testing.assert_array_equal(again.ct.hu, ct.hu)
    np.testing.assert_array_equal(again.airway.faces, small.airway.faces)
    other = generate_anatomy(8, SMALL)
    assert other.ct.hu.shape != ct.hu.shape or not np.array_equal(other.ct.hu, ct.hu)


def test_default_anatomy():
    anat = generate_anatomy(0)
    assert max(b.generation for b in anat.centerline.branches) >= 5
    assert 20_000 < len(anat.airway.faces) <= 400_000
    assert 0.15 < anat.airway.extent < 0.4
    rc = Raycaster(anat.airway.vertices, anat.airway.faces)
    p, _, _ = anat.centerline.all_points()
    assert rc.contains(p[::5]).mean() > 0.98


def test_shaped_lumens_leave_the_round_tube_but_keep_tree_and_closure(small):
    """``lumen_ellipticity`` / ``lumen_lobes``: the same tree (its own random stream), a closed
    lumen, but cross-sections that leave the round tube by a millimetre or so; the default stays
    round (test above)."""
    import trimesh
    from dataclasses import replace

    shaped = generate_anatomy(7, replace(SMALL, lumen_ellipticity=0.15, lumen_lobes=0.2))
    for b1, b2 in zip(small.centerline.branches, shaped.centerline.branches):
        assert np.allclose(b1.points, b2.points) and np.allclose(b1.radii, b2.radii)
    v = shaped.airway.vertices
    assert trimesh.Trimesh(v, shaped.airway.faces, process=False).is_watertight
    top = v[:, 2] > shaped.centerline.root.points[0, 2] - 2e-3
    err = tube_signed_distance(shaped.centerline, v[~top])
    assert np.percentile(np.abs(err), 95) > 4 * SMALL.voxel_mm * 0.3  # round: < 0.3 voxel median
    assert np.median(np.abs(err)) > 0.3 and abs(np.median(err)) < 0.5  # mm; about the round tube, not all out


def test_lumen_profile_shapes():
    from bronchopt_ros.sim.ct_synth import LumenProfile

    phi, s = np.linspace(0, 2 * np.pi, 360, endpoint=False), np.zeros(360)
    ell = LumenProfile(0.2, 0.3, np.zeros(4), np.zeros(4), 15.0, np.zeros(5))
    f = ell.scale(phi, s)
    assert f.max() == pytest.approx(1.2, abs=1e-3) and f.min() == pytest.approx(0.8, abs=1e-3)
    assert phi[np.argmax(f)] == pytest.approx(0.3, abs=0.02)  # the long axis at phi0 (and phi0 + pi)
    assert np.allclose(f, np.roll(f, 180))  # two-fold
    three = LumenProfile(0.0, 0.0, np.array([0.1, 0, 0, 0]), np.zeros(4), 15.0, np.zeros(5))
    g = three.scale(phi, s)
    assert np.allclose(g, np.roll(g, 120)) and g.mean() == pytest.approx(1.0, abs=1e-9)  # three folds, area kept
    drawn = LumenProfile.draw(np.random.default_rng(0), 0.12, 0.15)
    assert 0 <= drawn.e <= 0.3 and np.all(np.abs(drawn.a) <= 0.15) and 10 <= drawn.wavelength <= 25
