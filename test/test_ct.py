"""CT synthesis (HU values) and the CT / label map -> segmentation -> mesh path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bronchopt_ros.airway import load_airway
from bronchopt_ros.airway.ct import (CTVolume, is_label_map, load_ct, mesh_from_mask, mesh_from_nifti,
                                     segment_airway)
from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy, generate_centerline
from bronchopt_ros.sim.ct_synth import synthesize_ct

LIDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "airway_lidc487_label.nii.gz"
PARAMS = AnatomyParams(generations=3, voxel_mm=0.9)


@pytest.fixture(scope="module")
def anat():
    return generate_anatomy(11, PARAMS)


def _sample(ct: CTVolume, pts_mm: np.ndarray) -> np.ndarray:
    ijk = np.round(ct.mm_to_voxel(pts_mm)).astype(int)
    return ct.hu[tuple(ijk.T)].astype(float)


def test_synthetic_ct_intensities(anat):
    ct, cl = anat.ct, anat.centerline
    root = cl.root
    axis = root.points[10:-10] * 1e3
    r = root.radii[0] * 1e3
    assert np.median(_sample(ct, axis)) < -950  # air in the lumen
    # a ring in the wall: perpendicular offset by r + half the wall thickness
    u = root.points[-1] - root.points[0]
    u /= np.linalg.norm(u)
    side = np.cross(u, [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    wall = _sample(ct, axis + side * (r * (1 + PARAMS.wall_fraction)))
    assert -250 < np.median(wall) < 300
    # lung parenchyma: between terminal branches' tips, away from the tubes
    tips = np.array([b.points[-1] for b in cl.leaves()]) * 1e3
    dirs = np.array([b.points[-1] - b.points[-2] for b in cl.leaves()])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    par = _sample(ct, tips + dirs * 8.0)
    assert -930 < np.median(par) < -750
    assert par.std() > 5  # texture + noise
    assert ct.hu.dtype == np.int16 and ct.hu.min() >= -1024
    np.testing.assert_allclose(ct.spacing_mm, PARAMS.voxel_mm)
    # the top slice cuts the open trachea
    k_top = ct.hu.shape[2] - 1
    assert (ct.hu[:, :, k_top] < -900).sum() * PARAMS.voxel_mm ** 2 > 0.5 * np.pi * r ** 2


def test_ct_synthesis_is_seeded():
    cl = generate_centerline(2, PARAMS)
    a, b = synthesize_ct(cl, PARAMS, seed=2), synthesize_ct(cl, PARAMS, seed=2)
    c = synthesize_ct(cl, PARAMS, seed=3)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert not np.array_equal(a.hu, c.hu)  # other noise


def test_segmentation_finds_the_trachea_without_a_seed(anat):
    seeded = segment_airway(anat.ct, seed_mm=anat.centerline.root.points[5] * 1e3)
    auto = segment_airway(anat.ct)
    np.testing.assert_array_equal(auto, seeded)
    # outside-the-body air around the chest (touching the volume's borders, in every slice) is
    # not taken for the airway
    hu = np.pad(anat.ct.hu, ((30, 30), (30, 30), (0, 0)), constant_values=40)
    ring = np.ones(hu.shape, bool)
    ring[10:-10, 10:-10] = False
    hu[ring] = -1000
    affine = anat.ct.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([30, 30, 0])
    mask = segment_airway(CTVolume(hu, affine))
    assert mask.sum() == seeded.sum()
    assert not mask[ring].any()


def test_nifti_round_trip_gives_the_same_mesh(anat, tmp_path):
    path = anat.ct.save(tmp_path / "ct.nii.gz")
    ct = load_ct(path)
    np.testing.assert_array_equal(ct.hu, anat.ct.hu)
    np.testing.assert_allclose(ct.affine, anat.ct.affine, atol=1e-5)
    airway = mesh_from_nifti(path, threshold_hu=-900, max_faces=None)
    np.testing.assert_allclose(airway.vertices, anat.airway.vertices, atol=1e-6)
    np.testing.assert_array_equal(airway.faces, anat.airway.faces)
    via_loader = load_airway(path)  # auto-detects a CT in HU; mm -> m
    np.testing.assert_allclose(via_loader.vertices, anat.airway.vertices, atol=1e-6)


def test_label_map_path(anat, tmp_path):
    import nibabel as nib

    mask = segment_airway(anat.ct)
    lab = np.zeros(mask.shape, np.uint8)
    lab[mask] = 3
    lab[:3, :3, :3] = 3  # a stray speck: only the largest component stays
    path = tmp_path / "label.nii"
    nib.save(nib.Nifti1Image(lab, anat.ct.affine), str(path))
    assert is_label_map(load_ct(path))
    a = load_airway(path)  # non-zero voxels of a label map
    b = load_airway(path, label=3)
    np.testing.assert_allclose(a.vertices, b.vertices)
    assert abs(a.extent - anat.airway.extent) < 2 * PARAMS.voxel_mm * 1e-3
    with pytest.raises(ValueError, match="label 5"):
        mesh_from_nifti(path, label=5)


def test_clear_errors(tmp_path, anat):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(ValueError, match="cannot read"):
        load_ct(bad)
    with pytest.raises(FileNotFoundError):
        load_ct(tmp_path / "missing.nii")
    tissue = CTVolume(np.full((20, 20, 20), 40, np.int16), np.eye(4))
    with pytest.raises(ValueError, match="no voxel below"):
        segment_airway(tissue, threshold_hu=-900)
    with pytest.raises(ValueError, match="empty"):
        mesh_from_mask(np.zeros((5, 5, 5), bool), np.eye(4))
    with pytest.raises(ValueError, match="seed"):
        segment_airway(anat.ct, seed_mm=np.array([1e4, 0, 0]))


def test_mesh_orientation_with_a_flipped_affine(anat):
    """A left-handed affine (e.g. LPS voxel order) still gives outward normals."""
    import trimesh

    mask = segment_airway(anat.ct)
    flip = anat.ct.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    v, f = mesh_from_mask(mask, flip)
    assert trimesh.Trimesh(v, f, process=False).volume > 0


@pytest.mark.skipif(not LIDC.exists(), reason="real LIDC label map not available")
def test_lidc_label_map_loads_to_a_sensible_mesh():
    import trimesh

    airway = load_airway(LIDC)
    ext = np.ptp(airway.vertices, axis=0)
    assert 0.12 < airway.extent < 0.35  # metres: a bronchial tree
    assert np.all(ext > 0.05)
    m = trimesh.Trimesh(airway.vertices, airway.faces, process=False)
    assert m.is_watertight and m.volume > 0
    assert 50_000 < len(airway.faces) <= 400_000
