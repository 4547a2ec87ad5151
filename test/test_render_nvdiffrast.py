"""nvdiffrast (CUDA) backend against the CPU (Embree) backend. Skips without CUDA + nvdiffrast."""
import numpy as np
import pytest
import torch

from bronchopt_ros.render.base import make_renderer, nvdiffrast_available

from fixtures_render import bench_camera, trachea_pose, y_airway

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not nvdiffrast_available(), reason="needs CUDA and nvdiffrast"),
]

POSES = [trachea_pose(30.0), trachea_pose(20.0).retract([0.002, -0.001, 0.0, 0.2, -0.1, 0.3])]


@pytest.fixture(scope="module")
def renderers():
    a = y_airway(0.75)
    return make_renderer(a, backend="cpu"), make_renderer(a, backend="nvdiffrast")


def test_auto_picks_nvdiffrast():
    r = make_renderer(y_airway(0.75))
    assert r.name == "nvdiffrast"


@pytest.mark.parametrize("pose", POSES)
@pytest.mark.parametrize("size", [64, 200])
def test_parity_with_cpu(renderers, pose, size):
    cpu, gpu = renderers
    cam = bench_camera(size)
    a = cpu.render(cam, pose, jacobian=True)
    b = gpu.render(cam, pose, jacobian=True)
    assert b.depth.device.type == "cuda"
    same = (a.tri == b.tri.cpu()) & a.valid
    assert same.float().mean() > 0.97  # pixel-centre ties on shared edges may differ
    assert (a.valid == b.valid.cpu()).float().mean() > 0.99
    np.testing.assert_allclose(b.depth.cpu()[same].numpy(), a.depth[same].numpy(), rtol=1e-5)
    np.testing.assert_allclose(b.normals.cpu()[same].numpy(), a.normals[same].numpy(), atol=1e-5)
    ja, jb = a.jacobian.reshape(size, size, 6), b.jacobian.cpu().reshape(size, size, 6)
    np.testing.assert_allclose(jb[same].numpy(), ja[same].numpy(), rtol=1e-4, atol=1e-7)
    assert abs(a.inside_fraction - b.inside_fraction) < 0.01


@pytest.mark.parametrize("pose", POSES)
def test_interpolated_depth_equals_plane_depth(renderers, pose):
    _, gpu = renderers
    cam = bench_camera(128)
    out = gpu.render(cam, pose)
    z, valid = gpu.raster_depth(cam, pose)
    m = valid & out.valid
    assert m.float().mean() > 0.95
    torch.testing.assert_close(z[m], out.depth[m], rtol=1e-4, atol=1e-7)


def test_autograd_through_rasteriser_matches_closed_form(renderers):
    _, gpu = renderers
    cam, pose = bench_camera(64), POSES[1]
    out = gpu.render(cam, pose, jacobian=True)
    xi = torch.zeros(6, dtype=torch.float64, device="cuda", requires_grad=True)
    z, valid = gpu.raster_depth(cam, pose, xi)
    weights = torch.rand_like(z) * (valid & out.valid)
    (z * weights).sum().backward()
    want = (out.jacobian * weights.reshape(-1, 1)).sum(0).double()
    torch.testing.assert_close(xi.grad, want, rtol=2e-3, atol=1e-6)


def test_depth_fn_on_gpu(renderers):
    cpu, gpu = renderers
    cam, pose = bench_camera(64), POSES[0]
    f = gpu.depth_fn(cam, pose)
    xi = torch.zeros(6, device="cuda", requires_grad=True)
    f(xi).sum().backward()
    g = cpu.depth_fn(cam, pose)
    xc = torch.zeros(6, requires_grad=True)
    g(xc).sum().backward()
    torch.testing.assert_close(xi.grad.cpu(), xc.grad, rtol=2e-2, atol=1e-4)


def test_camera_outside_and_no_hits(renderers):
    from bronchopt_ros.geometry import Pose

    _, gpu = renderers
    cam = bench_camera(32)
    outside = Pose.look_at((0.03, 0.0, 0.03), (0.0, 0.0, 0.03), up=(0, 0, 1))
    out = gpu.render(cam, outside)
    assert out.valid.any() and not out.inside
    away = Pose.look_at((0.05, 0.0, 0.03), (0.1, 0.0, 0.03), up=(0, 0, 1))
    out = gpu.render(cam, away, jacobian=True)
    assert not out.valid.any() and not out.inside
