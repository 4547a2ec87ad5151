"""The odometry's photometric rotation refinement (bronchopt_ros.photometric) and the camera maths it
shares (Camera.project_jacobian / unproject), on the real textured tube of test_odometry."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree

from bronchopt_ros.geometry import Camera, Pose
from bronchopt_ros.odometry import FrameOdometry, OdometryConfig, to_gray
from bronchopt_ros.photometric import PhotometricReference, photometric_residuals, refine_rotation

from test_odometry import _FREQ, CAM, _path, _rgb, renderer, world  # noqa: F401 (fixtures)

MM = 1e-3


def test_project_jacobian_and_unproject_match_project():
    cam = Camera(200, 180, 110.0, 112.0, 99.5, 91.0)
    rng = np.random.default_rng(0)
    pts = rng.uniform([-0.01, -0.01, 0.005], [0.01, 0.01, 0.05], (20, 3))
    uv, z = cam.project(pts)
    np.testing.assert_allclose(cam.unproject(uv, z), pts, rtol=1e-12, atol=1e-15)
    J = cam.project_jacobian(pts)
    eps = 1e-7
    for k in range(3):
        d = np.zeros(3)
        d[k] = eps
        num = (cam.project(pts + d)[0] - cam.project(pts - d)[0]) / (2 * eps)
        np.testing.assert_allclose(J[:, :, k], num, rtol=1e-5, atol=1e-3)


def _pair(world, renderer):
    p0, p1 = _path(world, 2, step=0.6 * MM, roll=0.03)
    g0, g1 = to_gray(_rgb(world, p0)), to_gray(_rgb(world, p1))
    return p0, p1, g0, g1


def test_reference_jacobian_matches_finite_differences(world, renderer):
    """The reference's Jacobian predicts how its own (smooth) image looks turned by a small rotation."""
    p0, _, g0, _ = _pair(world, renderer)
    smooth = cv2.GaussianBlur(g0.astype(np.float32), (0, 0), 2.0)  # (so Sobel = the bilinear lookup's slope)
    ref = PhotometricReference.from_frame(smooth, CAM, p0, renderer)
    assert ref is not None and len(ref.intensity) > 500
    for axis in range(3):
        w = np.zeros(3)
        w[axis] = 1e-4
        rp, inside_p = photometric_residuals(ref, smooth, CAM, Pose.exp(np.r_[0, 0, 0, w]))
        rm, inside_m = photometric_residuals(ref, smooth, CAM, Pose.exp(np.r_[0, 0, 0, -w]))
        both = inside_p & inside_m
        assert both.mean() > 0.95
        num = (rp[both[inside_p]] - rm[both[inside_m]]) / 2e-4
        J = ref.jacobian[both, axis]
        assert np.corrcoef(num, J)[0, 1] > 0.98
        np.testing.assert_allclose(np.linalg.norm(J), np.linalg.norm(num), rtol=0.1)  # (Sobel smooths a little)


def test_refinement_recovers_a_rotation_and_keeps_the_camera_centre(world, renderer):
    p0, p1, g0, g1 = _pair(world, renderer)
    ref = PhotometricReference.from_frame(g0, CAM, p0, renderer)
    true = p0.inv() @ p1
    # PnP-like start: the right position, the rotation off by a roll and a tilt
    start = Pose.from_Rt(Pose.exp([0, 0, 0, 0.006, -0.004, -0.02]).R @ true.R, true.t)
    out = refine_rotation(ref, g1, CAM, start)
    assert start.rotation_error(true) > 0.02
    assert out.rotation_error(true) < 0.15 * start.rotation_error(true)
    np.testing.assert_allclose(out.t, start.t, atol=1e-12)  # the position is PnP's


def test_project_vjp_is_the_jacobian_transposed():
    cam = Camera(160, 160, 95.0, 96.0, 80.0, 79.0)
    rng = np.random.default_rng(1)
    pts = rng.uniform([-0.01, -0.01, 0.005], [0.01, 0.01, 0.05], (30, 3))
    g = rng.normal(size=(30, 2))
    np.testing.assert_allclose(cam.project_vjp(pts, g), np.einsum("ni,nij->nj", g, cam.project_jacobian(pts)),
                               rtol=1e-12)


@pytest.fixture(scope="module")
def ringed(world):
    """The tube painted with strong cartilage-like rings (3 mm apart along its axis) over a faint
    texture: rolling carries every ring onto itself, only the faint texture shows the roll."""
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(world.points, axis=0), axis=1))]
    tree = cKDTree(world.points)

    def rgb(pose):
        hits = world.raycaster.cast(CAM, pose)
        rays = CAM.rays(np.float64)
        dist = np.maximum(hits.depth, 1e-4) * np.linalg.norm(rays, axis=-1)
        cos = np.abs((hits.normal_cam * rays / np.linalg.norm(rays, axis=-1, keepdims=True)).sum(-1))
        s = arc[tree.query(hits.point_ct.reshape(-1, 3))[1]].reshape(hits.depth.shape)
        tex = (1.0 + 0.35 * np.sin(2 * np.pi * s / 0.003)) * (1.0 + 0.04 * np.sin(hits.point_ct @ _FREQ.T).sum(-1))
        img = (0.1 + cos) * tex / (dist / 0.01) ** 2
        img[~hits.valid] = 0.0
        img = np.clip(img / np.percentile(img[hits.valid], 95) * 0.85, 0, 1) ** (1 / 2.2)
        return np.repeat((img * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)

    return rgb


@pytest.mark.parametrize("photometric", [False, True])
def test_odometry_measures_the_roll_among_rings_only_with_the_refinement(world, renderer, ringed, photometric):
    """Three frames rolling 0.03 rad each down a ringed tube: Lucas-Kanade + PnP sees a fraction of
    the roll (the rings hold its windows in place); with the photometric refinement it is measured."""
    poses = _path(world, 4, step=0.4 * MM, roll=0.03)
    odo = FrameOdometry(OdometryConfig(photometric=photometric))
    odo.update(to_gray(ringed(poses[0])), CAM, poses[0], renderer)
    for k in range(1, 4):
        res = odo.track(to_gray(ringed(poses[k])), CAM)
        assert res is not None
    true_roll = (poses[0].inv() @ poses[3]).log()[5]
    roll = res.motion.log()[5]
    assert abs(true_roll) > 0.08
    if photometric:  # (0.070 of 0.092 rad; LK + PnP alone: 0.019)
        assert abs(roll - true_roll) < 0.3 * abs(true_roll)
        assert (poses[0] @ res.motion).rotation_error(poses[3]) < 0.03
    else:  # the bias this module exists for (if it ever goes away, the refinement may not be needed)
        assert abs(roll) < 0.5 * abs(true_roll)


def test_refinement_ignores_what_is_fixed_to_the_lens(world, renderer):
    """A high-contrast pattern fixed in the image (a bubble or dirt on the lens, the scope's own
    highlights) matches best with no motion at all; its pixels are left out, so the rotation is
    still recovered."""
    p0, p1 = _path(world, 2, step=0.6 * MM, roll=0.03)
    rgb0, rgb1 = _rgb(world, p0), _rgb(world, p1)
    yy, xx = np.mgrid[0:CAM.height, 0:CAM.width]
    blob = ((xx - 50) ** 2 + (yy - 60) ** 2 < 28 ** 2) & (((xx // 4) + (yy // 4)) % 2 == 0)
    for img in (rgb0, rgb1):
        img[blob] = 255
    g0, g1 = to_gray(rgb0), to_gray(rgb1)
    ref = PhotometricReference.from_frame(g0, CAM, p0, renderer)
    true = p0.inv() @ p1
    start = Pose.from_Rt(Pose.exp([0, 0, 0, 0.004, -0.003, -0.02]).R @ true.R, true.t)
    out = refine_rotation(ref, g1, CAM, start)
    # (with those pixels kept, the error grows instead: 0.021 -> 0.027 rad)
    assert out.rotation_error(true) < 0.35 * start.rotation_error(true)
