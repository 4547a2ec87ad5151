"""Centerline from a segmentation mask / lumen mesh, checked against the generator's own tree and
on a real label map."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bronchopt_ros.airway.ct import load_ct, segment_airway
from bronchopt_ros.airway.skeleton import centerline_from_mask, centerline_from_mesh
from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy

LIDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "airway_lidc487_label.nii.gz"
PARAMS = AnatomyParams(generations=4, voxel_mm=0.8)


@pytest.fixture(scope="module")
def anat():
    return generate_anatomy(21, PARAMS)


def _direction(b) -> np.ndarray:
    d = b.points[-1] - b.points[0]
    return d / np.linalg.norm(d)


def _check_against_generator(cl, truth, tol_branches: float = 0.2) -> None:
    assert abs(len(cl) - len(truth)) <= max(2, tol_branches * len(truth))
    r, g = cl.root, truth.root
    assert np.degrees(np.arccos(_direction(r) @ _direction(g))) < 5.0
    assert np.linalg.norm(r.points[-1] - g.points[-1]) < 6e-3  # carina
    assert np.linalg.norm(r.points[0] - g.points[0]) < 10e-3  # open end (skeleton ends short)
    assert abs(np.median(r.radii) / g.radii[0] - 1) < 0.15
    # main bronchi: two, leaving to either side
    kids = cl.children(r.id)
    assert len(kids) == 2
    assert sorted(np.sign([_direction(k)[0] for k in kids])) == [-1, 1]
    # tree structure and units
    assert max(b.generation for b in cl.branches) >= PARAMS.generations - 1
    for b in cl.branches:
        if b.parent >= 0:
            np.testing.assert_allclose(b.points[0], cl.branch(b.parent).points[-1])
        step = np.linalg.norm(np.diff(b.points, axis=0), axis=1)
        assert step.max() < 1.5e-3
        assert np.all(b.radii > 0) and np.all(b.radii < 15e-3)


def test_centerline_from_mask_matches_the_generator(anat):
    mask = segment_airway(anat.ct)
    cl = centerline_from_mask(mask, anat.ct.affine)
    _check_against_generator(cl, anat.centerline)
    # every centerline point lies in the lumen
    ijk = np.round(anat.ct.mm_to_voxel(cl.all_points()[0] * 1e3)).astype(int)
    assert mask[tuple(ijk.T)].mean() > 0.97


def test_centerline_from_mesh_matches_the_generator(anat):
    cl = centerline_from_mesh(anat.airway.vertices, anat.airway.faces, pitch_mm=0.8)
    _check_against_generator(cl, anat.centerline)


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        centerline_from_mask(np.zeros((4, 4, 4), bool), np.eye(4))


@pytest.mark.skipif(not LIDC.exists(), reason="real LIDC label map not available")
def test_lidc_label_map_centerline():
    ct = load_ct(LIDC)
    mask = segment_airway(ct, threshold_hu=None)
    cl = centerline_from_mask(mask, ct.affine)
    root = cl.root
    assert 20 < len(cl) < 600
    assert max(b.generation for b in cl.branches) >= 5
    # the trachea: at the top, running down, 12-25 mm wide, two main bronchi below it
    assert _direction(root)[2] < -0.8
    p, _, _ = cl.all_points()
    assert root.points[0, 2] >= p[:, 2].max() - 5e-3
    assert 12e-3 < 2 * np.median(root.radii) < 25e-3
    assert len(cl.children(root.id)) == 2
    ijk = np.round(ct.mm_to_voxel(p * 1e3)).astype(int)
    assert mask[tuple(ijk.T)].mean() > 0.95


def test_generation_at_names_the_branch_a_point_lies_in(anat):
    cl = anat.centerline
    deepest = max(cl.branches, key=lambda b: b.generation)
    kid = cl.children(cl.root.id)[0]
    pts = np.array([cl.root.points[len(cl.root.points) // 2], kid.points[len(kid.points) // 2],
                    deepest.points[len(deepest.points) // 2]])
    # (a little off the centerline, as a camera is)
    got = cl.generation_at(pts + 0.3e-3)
    assert got.tolist() == [0, kid.generation, deepest.generation] and deepest.generation >= 3
    from bronchopt_ros.airway.centerline import Centerline

    assert Centerline([]).generation_at(pts).tolist() == [-1, -1, -1]
