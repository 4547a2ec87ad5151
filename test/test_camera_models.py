"""Camera distortion models from CameraInfo: plumb_bob and equidistant (fisheye), undistorted as
OpenCV's documented models say."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from bronchopt_ros.geometry import Camera, _undistort_maps
from bronchopt_ros.pipeline import prepare_frame

K = [150.0, 0.0, 101.3, 0.0, 149.0, 97.8, 0.0, 0.0, 1.0]


def _info(model: str, d: list[float], w: int = 200, h: int = 200):
    return SimpleNamespace(k=K, d=d, distortion_model=model, width=w, height=h)


def _sample_pixels(cam: Camera) -> np.ndarray:
    u, v = np.meshgrid(np.linspace(20, cam.width - 21, 7), np.linspace(20, cam.height - 21, 7))
    return np.round(np.stack([u.ravel(), v.ravel()], 1))  # (whole pixels: the maps are per pixel)


@pytest.mark.parametrize("model, d", [("plumb_bob", [-0.3, 0.1, 0.001, -0.002, -0.02]),
                                      ("equidistant", [0.05, -0.02, 0.01, -0.003])])
def test_undistortion_inverts_the_documented_model(model, d):
    """Each undistorted pixel samples the distorted image where OpenCV's model of the lens puts
    that ray (cv2.projectPoints for plumb_bob, cv2.fisheye.distortPoints for equidistant)."""
    cam = Camera.from_camera_info(_info(model, d))
    assert cam.model == model and cam.has_distortion and len(cam.dist) == len(d)
    mx, my = _undistort_maps(cam)
    uv = _sample_pixels(cam)
    xy = np.stack([(uv[:, 0] - cam.cx) / cam.fx, (uv[:, 1] - cam.cy) / cam.fy], 1)
    if model == "equidistant":
        src = cv2.fisheye.distortPoints(xy.reshape(-1, 1, 2), cam.K, cam.dist.reshape(4, 1)).reshape(-1, 2)
    else:
        pts = np.concatenate([xy, np.ones((len(xy), 1))], 1)
        src = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K, cam.dist)[0].reshape(-1, 2)
    got = np.stack([mx[uv[:, 1].astype(int), uv[:, 0].astype(int)], my[uv[:, 1].astype(int), uv[:, 0].astype(int)]], 1)
    np.testing.assert_allclose(got, src, atol=0.05)


def test_an_equidistant_frame_is_undistorted_for_the_tracker():
    cam = Camera.from_camera_info(_info("equidistant", [0.05, -0.02, 0.01, -0.003]))
    rgb = np.random.default_rng(0).integers(0, 255, (200, 200, 3)).astype(np.uint8)
    frame = prepare_frame(rgb, cam, 1.0)
    assert not frame.camera.has_distortion and frame.camera.model == "plumb_bob"
    np.testing.assert_allclose(frame.camera.K, cam.K)
    small = cam.scaled(100)
    assert small.model == "equidistant" and np.array_equal(small.dist, cam.dist)  # (normalised coefficients)


def test_bad_camera_info_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="equidistant needs 4"):
        Camera.from_camera_info(_info("equidistant", [0.1, 0.0, 0.0]))
    with pytest.raises(ValueError, match="unsupported distortion model"):
        Camera.from_camera_info(_info("double_sphere", [0.1, 0.2]))
    with pytest.raises(ValueError, match="5 coefficients"):
        Camera.from_camera_info(_info("plumb_bob", [0.1, 0.0, 0.0]))


def test_the_bag_writer_keeps_the_model():
    from bronchopt_ros.io.bag import camera_info_msg

    cam = Camera.from_camera_info(_info("equidistant", [0.05, -0.02, 0.01, -0.003]))
    msg = camera_info_msg(cam, 0)
    back = Camera.from_camera_info(msg)
    assert msg.distortion_model == "equidistant" and back.model == "equidistant"
    np.testing.assert_allclose(back.dist, cam.dist)
