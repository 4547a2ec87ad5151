"""Pose optimisers: robust LM and Adam, on point sets and on depth registration in a Y airway."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bronchopt_ros.geometry import Pose, se3_exp_torch
from bronchopt_ros.optimize import (AdamConfig, GNConfig, RefineResult, adam_refine, depth_loss_at,
                                    depth_residual_fn, depth_residuals, gauss_newton, robust_scale,
                                    robust_weights)
from bronchopt_ros.render import make_renderer

from fixtures_render import MM, bench_camera, trachea_pose, y_airway, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield

# Paper's hard level: 7 mm / 0.49 rad. (CT-frame offset of the centre in mm, body rotation vector)
HARD_STARTS = [
    ([5.191, 3.77, -2.801], [-0.4394, -0.2164, 0.0143]),
    ([-6.774, -1.403, -1.068], [0.3887, 0.1543, 0.2554]),
    ([5.968, 3.465, 1.173], [-0.0625, 0.2901, 0.39]),
]


def _start(gt: Pose, dt_mm, rotvec) -> Pose:
    return Pose(gt.R @ Rotation.from_rotvec(rotvec).as_matrix(), gt.t + np.asarray(dt_mm) * MM)


def _points_problem(seed=0, outliers=0.0):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(200, 3)) * 0.02  # camera-frame points
    gt = Pose(Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix(), [0.01, -0.02, 0.03])
    q = gt.transform(p)
    n_out = int(outliers * len(p))
    q[:n_out] += rng.normal(size=(n_out, 3)) * 0.01
    return p, q, gt


def _point_residuals(p, q):
    def fn(pose: Pose):
        r = (pose.transform(p) - q).reshape(-1)
        J = np.zeros((len(p), 3, 6))
        J[:, :, :3] = pose.R
        px = np.zeros((len(p), 3, 3))
        px[:, 0, 1], px[:, 0, 2], px[:, 1, 2] = -p[:, 2], p[:, 1], -p[:, 0]
        px[:, 1, 0], px[:, 2, 0], px[:, 2, 1] = p[:, 2], -p[:, 1], p[:, 0]
        J[:, :, 3:] = -pose.R @ px
        return r, J.reshape(-1, 6)
    return fn


def test_robust_weights_shapes_and_limits():
    u = np.linspace(-10, 10, 101)
    for kind in ("huber", "cauchy", "tukey"):
        w, rho = robust_weights(u, kind)
        assert w.max() <= 1.0 + 1e-12 and w[50] == 1.0 and rho[50] == 0.0
        assert np.all(np.diff(w[50:]) <= 1e-12)  # non-increasing in |u|
    w, _ = robust_weights(u, "tukey")
    assert w[0] == 0.0
    assert robust_scale(np.array([1.0, -1.0, 1.0])) == pytest.approx(1.4826)
    with pytest.raises(ValueError):
        robust_weights(u, "l7")


def test_gauss_newton_exact_on_clean_points():
    p, q, gt = _points_problem()
    start = gt.retract([0.01, -0.005, 0.004, 0.3, -0.2, 0.1])
    res = gauss_newton(_point_residuals(p, q), start, GNConfig(robust="none"))
    assert isinstance(res, RefineResult) and res.converged
    assert res.pose.translation_error(gt) < 1e-8 and res.pose.rotation_error(gt) < 1e-7
    assert res.history[0] > res.history[-1]


@pytest.mark.parametrize("kind", ["huber", "cauchy", "tukey"])
def test_robust_lm_rejects_outliers(kind):
    p, q, gt = _points_problem(seed=1, outliers=0.2)
    start = gt.retract([0.005, 0.0, -0.004, 0.1, 0.1, -0.2])
    plain = gauss_newton(_point_residuals(p, q), start, GNConfig(robust="none"))
    robust = gauss_newton(_point_residuals(p, q), start, GNConfig(robust=kind, max_iters=50))
    assert robust.pose.translation_error(gt) < 0.2 * plain.pose.translation_error(gt)
    assert robust.pose.translation_error(gt) < 2e-4


def test_step_clamps_limit_each_iteration():
    p, q, gt = _points_problem()
    start = gt.retract([0.02, 0.0, 0.0, 0.0, 0.0, 0.4])
    poses = []
    fn = _point_residuals(p, q)

    def rec(pose):
        poses.append(pose)
        return fn(pose)
    cfg = GNConfig(robust="none", max_step_trans=1e-3, max_step_rot=0.05, max_iters=60)
    res = gauss_newton(rec, start, cfg)
    for a, b in zip(poses[:-1], poses[1:]):
        d = a.inv() @ b
        assert np.linalg.norm(d.log()[:3]) <= 1e-3 + 1e-9 or np.linalg.norm(d.t) <= 1e-3 + 1e-9
        assert d.rotation_error(Pose.identity()) <= 0.05 + 1e-9
    assert res.pose.translation_error(gt) < 1e-8


def test_adam_on_points():
    p, q, gt = _points_problem()
    pt, qt = torch.tensor(p), torch.tensor(q)

    def loss_at(pose):
        R0, t0 = torch.tensor(pose.R), torch.tensor(pose.t)

        def loss(xi):
            R, t = se3_exp_torch(xi)
            x = (pt @ R.T + t) @ R0.T + t0
            return ((x - qt) ** 2).sum(-1).mean()
        return loss
    start = gt.retract([0.004, -0.003, 0.002, 0.2, -0.1, 0.15])
    res = adam_refine(loss_at, start, AdamConfig(max_iters=500))
    assert res.converged and res.iterations < 500
    assert res.pose.translation_error(gt) < 1e-5 and res.pose.rotation_error(gt) < 1e-4
    assert res.loss < 1e-3 * res.history[0]


# ---------------------------------------------------------------------- depth registration
@pytest.fixture(scope="module")
def renderer():
    return make_renderer(y_airway(0.75), backend="cpu")


def test_depth_residuals_consistent_with_render(renderer):
    cam, gt = bench_camera(32), trachea_pose(30.0)
    target = renderer.render(cam, gt)
    out = renderer.render(cam, gt.retract([0.001, 0, 0, 0, 0.02, 0]))
    for kind in ("depth", "log", "silog"):
        r, J = depth_residuals(out, target.depth, kind=kind)
        assert r.shape[0] == J.shape[0] > 0.8 * 32 * 32 and J.shape[1] == 6
        r0, _ = depth_residuals(target, target.depth, kind=kind)
        assert float(r0.abs().max()) < 1e-6
    r, _ = depth_residuals(out, target.depth, kind="silog")
    assert abs(float(r.mean())) < 1e-12
    with pytest.raises(ValueError):
        depth_residuals(out, target.depth, kind="l1")


@pytest.mark.parametrize("start", HARD_STARTS)
def test_gauss_newton_registers_depth_from_hard_start(renderer, start):
    gt = trachea_pose(30.0)
    pose = _start(gt, *start)
    assert 6.5 < pose.translation_error(gt) / MM < 7.5 and 0.47 < pose.rotation_error(gt) < 0.51
    assert renderer.inside(bench_camera(32), pose)
    for size in (16, 32, 64):  # coarse to fine
        cam = bench_camera(size)
        target = renderer.render(cam, gt)
        res = gauss_newton(depth_residual_fn(renderer, cam, target.depth, kind="log"), pose, GNConfig(max_iters=40))
        pose = res.pose
    assert res.converged
    assert pose.translation_error(gt) < 0.1 * MM and pose.rotation_error(gt) < 0.002


@pytest.mark.parametrize("start", HARD_STARTS)
def test_adam_registers_depth_from_hard_start(renderer, start):
    gt = trachea_pose(30.0)
    pose = _start(gt, *start)
    cam = bench_camera(64)
    target = renderer.render(cam, gt)
    res = adam_refine(depth_loss_at(renderer, cam, target.depth, kind="log"), pose, AdamConfig(max_iters=400))
    assert res.converged
    assert res.pose.translation_error(gt) < 0.1 * MM and res.pose.rotation_error(gt) < 0.002


def test_residual_fn_outside_lumen_gives_nothing(renderer):
    cam, gt = bench_camera(32), trachea_pose(30.0)
    target = renderer.render(cam, gt)
    outside = Pose.look_at((0.03, 0.0, 0.03), (0.0, 0.0, 0.03), up=(0, 0, 1))
    r, J = depth_residual_fn(renderer, cam, target.depth)(outside)
    assert r.numel() == 0 and J.shape == (0, 6)
    loss = depth_loss_at(renderer, cam, target.depth)(outside)(torch.zeros(6, dtype=torch.float64))
    assert not torch.isfinite(loss)
