"""The CPU (Embree) renderer on a procedural Y-shaped airway."""
import numpy as np
import pytest
import torch

from bronchopt_ros.geometry import Camera, Pose
from bronchopt_ros.render.base import DepthRender, make_renderer
from bronchopt_ros.render.cpu import CpuRenderer
from bronchopt_ros.render.raycast import Raycaster

from fixtures_render import MM, bench_camera, moller_trumbore, trachea_pose, y_airway, torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def airway():
    return y_airway(0.75)


@pytest.fixture(scope="module")
def renderer(airway):
    return make_renderer(airway, backend="cpu")


def test_auto_backend_is_cpu_without_cuda(airway):
    r = make_renderer(airway)
    if not torch.cuda.is_available():
        assert isinstance(r, CpuRenderer)
    with pytest.raises(ValueError):
        make_renderer(airway, backend="opengl")


def test_depth_matches_brute_force_moller_trumbore():
    small = y_airway(2.0)
    r = CpuRenderer(small.vertices, small.faces)
    cam = bench_camera(24)
    pose = trachea_pose(30.0).retract([0.002, -0.001, 0.0, 0.05, 0.1, 0.0])
    out = r.render(cam, pose)
    dirs = cam.rays(np.float64).reshape(-1, 3) @ pose.R.T
    tri, t = moller_trumbore(pose.t, dirs, small.vertices[small.faces])
    H, W = cam.height, cam.width
    assert out.valid.all() and (tri >= 0).all()
    np.testing.assert_allclose(out.depth.numpy(), t.reshape(H, W), rtol=1e-5)
    assert (out.tri.numpy().ravel() == tri).mean() > 0.98  # ties on shared edges may differ


def test_render_fields_and_normals(renderer):
    cam, pose = bench_camera(48), trachea_pose()
    out = renderer.render(cam, pose, normals=True, jacobian=True)
    assert isinstance(out, DepthRender)
    assert out.depth.dtype == torch.float32 and out.depth.shape == (48, 48)
    assert out.valid.dtype == torch.bool and out.valid.all()
    assert out.jacobian.shape == (48 * 48, 6) and out.normals.shape == (48, 48, 3)
    assert out.inside and out.inside_fraction > 0.99
    # carina is 35 mm ahead; the wall is at least as near as the lumen is wide
    assert 0.02 < float(out.depth.max()) < 0.08
    hits = renderer.raycaster.cast(cam, pose)
    np.testing.assert_allclose(out.depth.numpy(), hits.depth, rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(out.normals.numpy(), hits.normal_cam, atol=1e-5)
    assert torch.allclose(out.normals.norm(dim=-1), torch.ones(()), atol=1e-5)


def test_jacobian_matches_rerendered_finite_differences(renderer):
    cam = bench_camera(48)
    pose = trachea_pose().retract([0.001, 0.002, 0.0, 0.1, -0.05, 0.02])
    out = renderer.render(cam, pose, jacobian=True)
    J = out.jacobian.numpy().reshape(48, 48, 6)
    for k, h in enumerate([1e-5] * 3 + [2e-4] * 3):
        e = np.zeros(6)
        e[k] = h
        a, b = renderer.render(cam, pose.retract(e)), renderer.render(cam, pose.retract(-e))
        same = (a.tri == out.tri) & (b.tri == out.tri) & out.valid
        assert same.float().mean() > 0.5
        fd = (a.depth.double() - b.depth.double()).numpy() / (2 * h)
        m = same.numpy()
        err = np.abs(fd[m] - J[..., k][m])
        scale = np.abs(J[..., k][m]).max()
        assert np.median(err) < 1e-3 * scale and np.percentile(err, 95) < 2e-2 * scale


def test_depth_fn_gradient_matches_closed_form(renderer):
    cam, pose = bench_camera(32), trachea_pose(25.0)
    out = renderer.render(cam, pose, jacobian=True)
    f = renderer.depth_fn(cam, pose, dtype=torch.float64)
    assert torch.equal(f.valid, out.valid)
    np.testing.assert_allclose(f().numpy(), out.depth.numpy(), rtol=1e-6)
    Ja = torch.autograd.functional.jacobian(lambda x: f(x).reshape(-1), torch.zeros(6, dtype=torch.float64))
    np.testing.assert_allclose(Ja.numpy(), out.jacobian.numpy(), rtol=1e-5, atol=1e-9)
    # backward through a scalar loss
    xi = torch.zeros(6, requires_grad=True)
    loss = renderer.depth_fn(cam, pose)(xi).sum()
    loss.backward()
    np.testing.assert_allclose(xi.grad.numpy(), out.jacobian.sum(0).numpy(), rtol=1e-4)


def test_near_plane_invalidates_close_hits(airway):
    cam = bench_camera(32)
    pose = trachea_pose()
    far_view = CpuRenderer(airway.vertices, airway.faces).render(cam, pose)
    near = float(np.median(far_view.depth.numpy()))
    out = CpuRenderer(airway.vertices, airway.faces, near=near).render(cam, pose)
    closer = (far_view.depth < near).numpy()
    assert closer.any() and not out.valid.numpy()[closer].any()
    np.testing.assert_array_equal(out.depth.numpy()[~closer], far_view.depth.numpy()[~closer])


def test_camera_outside_lumen_is_flagged(renderer):
    cam = bench_camera(32)
    outside = Pose.look_at((0.03, 0.0, 0.03), (0.0, 0.0, 0.03), up=(0, 0, 1))  # looking at the trachea
    assert not renderer.raycaster.contains(outside.t[None])[0]
    out = renderer.render(cam, outside, jacobian=True)
    assert out.valid.any() and not out.inside and out.inside_fraction < 0.01
    assert not renderer.inside(cam, outside)
    assert renderer.inside(cam, trachea_pose())


def test_no_hits_gives_all_invalid(renderer):
    cam = bench_camera(32)
    away = Pose.look_at((0.05, 0.0, 0.03), (0.1, 0.0, 0.03), up=(0, 0, 1))
    out = renderer.render(cam, away, jacobian=True)
    assert not out.valid.any() and not out.inside
    assert float(out.depth.abs().sum()) == 0.0 and float(out.jacobian.abs().sum()) == 0.0
    assert (out.tri == -1).all()
    f = renderer.depth_fn(cam, away)
    assert f(torch.zeros(6)).shape == (32, 32) and float(f(torch.zeros(6)).sum()) == 0.0


def test_degenerate_triangles_do_not_break_rendering():
    # a square wall 10 mm ahead made of 2 triangles, plus degenerate ones (a point, a line)
    V = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, -0.5]], float) * 0.01
    F = np.array([[0, 1, 2], [0, 2, 3], [4, 4, 4], [0, 2, 0]])
    r = CpuRenderer(V, F)
    assert r._face_ok.tolist() == [True, True, False, False]
    cam = Camera(16, 16, 8.0, 8.0, 7.5, 7.5)
    pose = Pose.look_at((0, 0, 0.01), (0, 0, 0), up=(0, 1, 0))
    out = r.render(cam, pose, jacobian=True)
    assert out.valid.float().mean() > 0.5
    assert set(out.tri[out.valid].tolist()) <= {0, 1}
    np.testing.assert_allclose(out.depth[out.valid].numpy(), 0.01, rtol=1e-6)
    assert torch.isfinite(out.jacobian).all()


def test_raycaster_contains_matches_renderer_flag(renderer):
    pts = np.array([[0, 0, 0.03], [0.03, 0, 0.03], [0, 0, -0.005]])
    assert renderer.raycaster.contains(pts).tolist() == [True, False, True]
