"""The shared projection maths: exact depth of xi, closed-form Jacobians, GL matrices."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bronchopt_ros.geometry import Camera, Pose
from bronchopt_ros.render.projection import (camera_space_vertices, clip_space_vertices, depth_jacobian,
                                             gl_projection_matrix, hit_planes, hit_planes_from_vertices,
                                             log_depth_jacobian, plane_depth, plane_normals, to_image,
                                             triangle_planes)

from fixtures_render import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield


def _scene(seed=0, H=6, W=7):
    """Random triangles in front of a random camera, one per pixel, each crossing its pixel's ray."""
    rng = np.random.default_rng(seed)
    cam = Camera(W, H, 5.0, 5.5, 3.1, 2.4)
    pose = Pose(Rotation.from_rotvec(rng.normal(size=3)).as_matrix(), rng.normal(size=3) * 0.05)
    rays = cam.rays(np.float64)
    z = rng.uniform(0.01, 0.05, size=(H, W))
    P = rays * z[..., None]  # camera-frame hit points
    tris_c = P[..., None, :] + rng.normal(size=(H, W, 3, 3)) * 0.004
    # make the triangle pass through P: shift its centroid onto P
    tris_c += (P - tris_c.mean(-2))[..., None, :]
    tris_ct = tris_c @ pose.R.T + pose.t
    return cam, pose, rays, tris_ct, z


def _ray_plane_depth_numpy(cam, pose, tris_ct):
    """Independent: intersect each pixel ray of ``pose`` with its triangle's plane (CT frame)."""
    rays = cam.rays(np.float64)
    d = rays @ pose.R.T
    v0, v1, v2 = tris_ct[..., 0, :], tris_ct[..., 1, :], tris_ct[..., 2, :]
    n = np.cross(v1 - v0, v2 - v0)
    s = np.einsum("...i,...i", n, v0 - pose.t) / np.einsum("...i,...i", n, d)
    return s  # z = 1 rays: the ray parameter is the z-depth


def test_depth_is_exact_function_of_xi():
    cam, pose, rays, tris, z = _scene()
    planes = hit_planes_from_vertices(rays, tris, pose)
    assert planes.count == cam.width * cam.height
    np.testing.assert_allclose(to_image(planes, plane_depth(planes)).numpy(), z, rtol=1e-10)
    rng = np.random.default_rng(1)
    for _ in range(3):
        xi = rng.normal(size=6) * np.array([0.004] * 3 + [0.15] * 3)
        got = to_image(planes, plane_depth(planes, torch.tensor(xi))).numpy()
        want = _ray_plane_depth_numpy(cam, pose.retract(xi), tris)
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_closed_form_jacobian_matches_autograd_and_finite_differences():
    cam, pose, rays, tris, z = _scene(seed=3)
    planes = hit_planes_from_vertices(rays, tris, pose)
    J = depth_jacobian(planes)
    Jlog = log_depth_jacobian(planes)
    Ja = torch.autograd.functional.jacobian(lambda x: plane_depth(planes, x), torch.zeros(6, dtype=torch.float64))
    Jla = torch.autograd.functional.jacobian(lambda x: torch.log(plane_depth(planes, x)),
                                             torch.zeros(6, dtype=torch.float64))
    np.testing.assert_allclose(J.numpy(), Ja.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Jlog.numpy(), Jla.numpy(), rtol=1e-9, atol=1e-12)
    # central finite differences on the independent numpy intersection
    h = 1e-6
    for k in range(6):
        e = np.zeros(6)
        e[k] = h
        fd = (_ray_plane_depth_numpy(cam, pose.retract(e), tris) - _ray_plane_depth_numpy(cam, pose.retract(-e), tris)) / (2 * h)
        np.testing.assert_allclose(to_image(planes, J[:, k]).numpy(), fd, rtol=1e-5, atol=1e-8)


def test_normals_follow_the_pose():
    cam, pose, rays, tris, z = _scene(seed=5)
    planes = hit_planes_from_vertices(rays, tris, pose)
    n_ct, _, ok = triangle_planes(tris)
    assert ok.all()
    xi = np.array([0.001, -0.002, 0.0, 0.1, -0.05, 0.2])
    p2 = pose.retract(xi)
    got = to_image(planes, plane_normals(planes, torch.tensor(xi))).numpy()
    want = n_ct @ p2.R  # into the perturbed camera frame
    # same line, oriented towards the (unperturbed) camera
    np.testing.assert_allclose(np.abs(np.einsum("...i,...i", got, want)), 1.0, rtol=1e-10)
    assert np.all(np.einsum("...i,...i", to_image(planes, planes.normal).numpy(), rays) < 0)


def test_face_planes_and_vertex_planes_agree():
    cam, pose, rays, tris, z = _scene(seed=7)
    H, W = z.shape
    n, d, ok = triangle_planes(tris.reshape(-1, 3, 3))
    tri = np.arange(H * W).reshape(H, W)
    tri[0, 0] = -1  # a miss
    a = hit_planes(rays, tri, n, d, pose)
    b = hit_planes_from_vertices(rays, tris, pose, valid=tri >= 0)
    assert a.count == b.count == H * W - 1
    np.testing.assert_allclose(a.depth0().numpy(), b.depth0().numpy(), rtol=1e-9)
    np.testing.assert_allclose(depth_jacobian(a).numpy(), depth_jacobian(b).numpy(), rtol=1e-7, atol=1e-10)
    assert not to_image(a, torch.ones(a.count)).bool()[0, 0]


def test_invalid_hits_dropped_degenerate_near_grazing():
    cam, pose, rays, tris, z = _scene(seed=9)
    H, W = z.shape
    tris = tris.copy()
    tris[1, 1, 2] = tris[1, 1, 0]  # zero-area triangle
    n, d, ok = triangle_planes(tris.reshape(-1, 3, 3))
    assert ok.sum() == H * W - 1 and not ok[1 * W + 1]
    tri = np.arange(H * W).reshape(H, W)
    near = float(np.sort(z.ravel())[3]) + 1e-9  # the 4 nearest hits fall before the near plane
    planes = hit_planes(rays, tri, n, d, pose, face_ok=ok, near=near)
    valid = planes.valid.numpy()
    assert not valid[1, 1]
    assert not valid[z < near].any()
    assert valid.sum() == H * W - 1 - (z < near).sum() + (z[1, 1] < near)


def test_gl_projection_matches_pinhole():
    cam = Camera(200, 160, 110.2, 111.0, 100.6, 83.7)
    near, far = 1e-3, 0.2
    P = gl_projection_matrix(cam, near, far)
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.02, 0.02, 50), rng.uniform(-0.02, 0.02, 50), rng.uniform(near, far, 50)])
    clip = np.c_[pts, np.ones(50)] @ P.T
    ndc = clip[:, :3] / clip[:, 3:]
    uv, z = cam.project(pts)
    np.testing.assert_allclose((ndc[:, 0] + 1) * cam.width / 2 - 0.5, uv[:, 0], atol=1e-9)
    np.testing.assert_allclose((ndc[:, 1] + 1) * cam.height / 2 - 0.5, uv[:, 1], atol=1e-9)
    np.testing.assert_allclose(clip[:, 3], pts[:, 2])
    e = np.array([[0, 0, near, 1], [0, 0, far, 1]]) @ P.T
    np.testing.assert_allclose(e[:, 2] / e[:, 3], [-1, 1], atol=1e-12)
    with pytest.raises(ValueError):
        gl_projection_matrix(cam, 0.0, 1.0)


def test_camera_and_clip_space_vertices():
    rng = np.random.default_rng(2)
    pose = Pose(Rotation.from_rotvec(rng.normal(size=3)).as_matrix(), rng.normal(size=3))
    v = torch.tensor(rng.normal(size=(20, 3)))
    vc = camera_space_vertices(v, pose)
    np.testing.assert_allclose(pose.transform(vc.numpy()), v.numpy(), atol=1e-12)
    cam = Camera(64, 48, 40.0, 41.0, 31.5, 23.5)
    clip, vc2 = clip_space_vertices(v, pose, cam, 0.01, 10.0)
    np.testing.assert_allclose(vc2.numpy(), vc.numpy())
    np.testing.assert_allclose(clip[:, 3].numpy(), vc[:, 2].numpy())
