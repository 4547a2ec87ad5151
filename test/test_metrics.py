"""Image metrics on rendered depth of the Y airway, and pose error statistics."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bronchopt_ros.geometry import Pose
from bronchopt_ros.metrics import (depth_metrics, disparity_similarity, is_success, normal_correlation,
                                   normals_from_depth, pose_error_stats, rotation_error_deg,
                                   scale_invariant_log_error, translation_error_mm)
from bronchopt_ros.render import make_renderer

from fixtures_render import MM, bench_camera, trachea_pose, y_airway, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def scene():
    r = make_renderer(y_airway(0.75), backend="cpu")
    cam, gt = bench_camera(64), trachea_pose(30.0)
    return r, cam, gt, r.render(cam, gt)


def test_identical_maps(scene):
    r, cam, gt, ref = scene
    m = depth_metrics(ref.depth, ref.depth, cam)
    assert m["disp_sim"] == pytest.approx(1.0, abs=1e-12)
    assert m["normal_corr"] == pytest.approx(1.0, abs=1e-9)
    assert m["si_log"] == pytest.approx(0.0, abs=1e-12)


def test_scale_invariance(scene):
    r, cam, gt, ref = scene
    d = ref.depth.numpy()
    assert disparity_similarity(2.5 * d, d) == pytest.approx(1.0, abs=1e-9)
    assert scale_invariant_log_error(2.5 * d, d) == pytest.approx(0.0, abs=1e-12)
    assert normal_correlation(2.5 * d, d, cam) == pytest.approx(1.0, abs=1e-6)


def test_perturbed_is_worse_and_monotone(scene):
    r, cam, gt, ref = scene
    direction = np.array([0.6, -0.4, 0.3, 0.05, 0.08, -0.1])
    ds, nc, si = [], [], []
    for s in (0.5, 1.0, 2.0, 4.0):  # 0.4 .. 3 mm, 0.03 .. 0.21 rad
        est = r.render(cam, gt.retract(np.r_[direction[:3] * s * MM, direction[3:] * s]))
        m = depth_metrics(est.depth, ref.depth, cam)
        ds.append(m["disp_sim"])
        nc.append(m["normal_corr"])
        si.append(m["si_log"])
    assert ds[0] < 1.0 and nc[0] < 1.0 and si[0] > 0.0
    assert all(np.diff(ds) < 0), ds
    assert all(np.diff(nc) < 0), nc
    assert all(np.diff(si) > 0), si


def test_masks_and_invalid_pixels(scene):
    r, cam, gt, ref = scene
    d = ref.depth.numpy().copy()
    noisy = d * np.exp(np.random.default_rng(0).normal(size=d.shape) * 0.05)
    mask = np.zeros_like(d, bool)
    mask[:, :32] = True
    noisy_masked = noisy.copy()
    noisy_masked[mask] = d[mask]  # identical inside the mask
    assert disparity_similarity(noisy_masked, d, mask) == pytest.approx(1.0)
    assert scale_invariant_log_error(noisy_masked, d, mask) == pytest.approx(0.0, abs=1e-12)
    assert scale_invariant_log_error(noisy_masked, d) > 1e-4
    # invalid (0) pixels are ignored, not compared
    holes = d.copy()
    holes[10:20, 10:20] = 0.0
    assert disparity_similarity(holes, d) == pytest.approx(1.0)
    assert math.isnan(disparity_similarity(np.zeros_like(d), d))
    n, valid, _ = normals_from_depth(holes, cam)
    assert not valid[9:21, 10:20].any() and not valid[10:20, 9:21].any() and valid[9, 9] and valid[30, 30]
    assert np.allclose(np.linalg.norm(n[valid], axis=-1), 1.0)
    # torch input works the same
    assert disparity_similarity(torch.tensor(noisy), torch.tensor(d)) == pytest.approx(disparity_similarity(noisy, d))


def test_normals_from_depth_of_a_plane():
    from bronchopt_ros.geometry import Camera
    cam = Camera(40, 30, 30.0, 30.0, 19.5, 14.5)
    # plane n . p = h with n towards the camera
    nrm = np.array([0.2, -0.3, -1.0])
    nrm /= np.linalg.norm(nrm)
    rays = cam.rays(np.float64)
    z = -0.05 / (rays @ nrm)
    n, valid, _ = normals_from_depth(z, cam)
    assert valid.all()  # (one-sided differences at the border)
    np.testing.assert_allclose(n[valid] @ nrm, 1.0, atol=1e-9)  # towards the camera


def test_pose_errors_and_stats():
    gt = [Pose(Rotation.from_rotvec([0, 0, 0.1 * i]).as_matrix(), [0.01 * i, 0, 0]) for i in range(4)]
    est = [
        gt[0],
        Pose(gt[1].R, gt[1].t + [0.003, 0.004, 0.0]),  # 5 mm: success (boundary)
        Pose(gt[2].R @ Rotation.from_rotvec([0.0, 0.2, 0.0]).as_matrix(), gt[2].t),  # 11.5 deg: failure
        None,  # lost
    ]
    assert translation_error_mm(est[1], gt[1]) == pytest.approx(5.0)
    assert rotation_error_deg(est[2], gt[2]) == pytest.approx(math.degrees(0.2))
    assert is_success(est[1], gt[1]) and not is_success(est[2], gt[2]) and not is_success(None, gt[3])
    s = pose_error_stats(est, gt)
    for key in ("trans_err_mm_mean", "trans_err_mm_median", "rot_err_rad_mean", "rot_err_deg_mean",
                "success_rate", "frames"):
        assert key in s
    assert s["frames"] == 4 and s["success_rate"] == pytest.approx(0.5)
    assert s["trans_err_mm_mean"] == pytest.approx(5.0 / 3)
    assert s["trans_err_mm_median"] == pytest.approx(0.0)
    assert s["rot_err_rad_mean"] == pytest.approx(0.2 / 3)
    assert s["rot_err_deg_mean"] == pytest.approx(math.degrees(0.2 / 3))
    assert s["trans_err_mm_mean_success"] == pytest.approx(2.5)
    assert math.isnan(pose_error_stats([], [])["trans_err_mm_mean"])
    with pytest.raises(ValueError):
        pose_error_stats(est[:2], gt)
