"""The scope light's compensation (bronchopt_ros/lighting.py) on the simulator's own image model:
re-lighting with the true geometry undoes an off-axis light, the estimator finds the light from
frames and the CT, and the compensator re-lights from a registered frame's depth only when it is
recent."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixtures_sim import small_camera

from bronchopt_ros.cli.evaluate import pipeline_from_yaml
from bronchopt_ros.lighting import (LightCompensator, LightEstimator, LightingConfig, irradiance, irradiance_ratio,
                                    relight)
from bronchopt_ros.metrics import normals_from_depth
from bronchopt_ros.render.base import make_renderer
from bronchopt_ros.sim.appearance import Appearance
from bronchopt_ros.sim.trajectory import sample_lumen_poses
from bronchopt_ros.sim.views import render_view


@pytest.fixture(scope="module")
def poses(airway):
    return sample_lumen_poses(airway, np.random.default_rng(5), 8)


# no noise, blur or vignetting: what is left is the light and the albedo
APP = Appearance(shot_noise=0.0, read_noise=0.0, blur_sigma=0.0, vignetting=0.0, specular_strength=0.0,
                 ambient=0.0, gamma=2.2)


def _light(offset_m: float, angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0]) * offset_m


def test_relight_with_the_true_geometry_undoes_an_off_axis_light(scene, poses):
    cam = small_camera(64)
    errors = []
    for pose in poses[:4]:
        gain = render_view(scene, cam, pose, APP, np.random.default_rng(0)).gain
        axis = render_view(scene, cam, pose, APP, np.random.default_rng(0), gain=gain)
        off = render_view(scene, cam, pose, replace(APP, light_offset=1.5e-3, light_angle=30.0),
                          np.random.default_rng(0), gain=gain)
        m = axis.mask
        points = cam.rays() * off.depth[..., None]
        normals, valid, _ = normals_from_depth(np.where(m, off.depth, 0.0), cam)
        rho = np.where(valid, irradiance_ratio(points, normals, _light(1.5e-3, 30.0)), 1.0)
        relit = relight(off.rgb, rho, APP.gamma)

        def err(img):  # relative error of the luma, the gain matched (relight keeps the 99th percentile)
            a, b = img.astype(float).mean(-1)[m], axis.rgb.astype(float).mean(-1)[m]
            return np.abs(a * np.median(b / np.maximum(a, 1)) - b).mean() / b.mean()

        errors.append((err(off.rgb), err(relit)))
    before, after = np.array(errors).T
    assert before.mean() > 0.04  # the offset light changes the picture (~6 % of the luma here)...
    # ... and re-lighting takes out a good part of it in every view (what stays: the shading
    # normals' relief on the rings, which the depth does not show)
    assert np.all(after < before) and after.mean() < 0.7 * before.mean()


def test_relight_is_the_identity_for_an_on_axis_light():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.array_equal(relight(rgb, np.ones((8, 10), np.float32)), rgb)
    cam = small_camera(8)
    depth = np.random.default_rng(1).uniform(3e-3, 6e-3, (cam.height, cam.width))
    normals, valid, _ = normals_from_depth(depth, cam)
    assert valid.all()
    assert np.allclose(irradiance_ratio(cam.rays() * depth[..., None], normals, np.zeros(3)), 1.0)


@pytest.mark.parametrize("offset_mm, angle", [(1.2, 90.0), (1.2, 200.0), (0.0, 0.0)])
def test_estimator_finds_the_light_from_frames_and_the_ct(scene, poses, offset_mm, angle):
    """Frames under a known light, the CT's geometry at their poses: the estimate lands within
    about two grid steps (0.6 mm) of the light, in any direction, and near the lens for an on-axis
    light."""
    cam = small_camera(32)
    app = replace(APP, light_offset=offset_mm * 1e-3, light_angle=angle)
    est = LightEstimator(LightingConfig(min_frames=len(poses), narrow_mm=100.0))  # (every view sampled)
    for i, pose in enumerate(poses):
        v = render_view(scene, cam, pose, app, np.random.default_rng(i))
        points = cam.rays() * v.depth[..., None]
        est.add(v.rgb.mean(-1) / 255.0, points, v.normals, v.mask)
    found = est.estimate()
    assert found is not None
    assert np.linalg.norm(found - _light(offset_mm * 1e-3, angle)) < 0.6e-3


def test_estimator_costs_are_the_spread_of_log_intensity_over_log_irradiance(scene, poses):
    """The estimator's product form of the costs equals the plain one, from :func:`irradiance`."""
    cam = small_camera(32)
    cfg = LightingConfig(narrow_mm=100.0, pixels=100)
    est = LightEstimator(cfg)
    v = render_view(scene, cam, poses[1], replace(APP, light_offset=1e-3), np.random.default_rng(1))
    points, gray = cam.rays() * v.depth[..., None], v.rgb.mean(-1) / 255.0
    assert est.add(gray, points, v.normals, v.mask)
    m = v.mask & (gray > 0.02) & (gray < 0.98)
    idx = np.flatnonzero(m)[np.linspace(0, m.sum() - 1, 100).astype(int)]
    P, N, g = points.reshape(-1, 3)[idx], v.normals.reshape(-1, 3)[idx], gray.reshape(-1)[idx]
    for k in (0, len(est.candidates) // 2, len(est.candidates) - 1):
        r = cfg.gamma * np.log(g) - np.log(irradiance(P, N, est.candidates[k].astype(float)))
        assert est.cost[k] == pytest.approx(np.minimum(np.abs(r - np.median(r)), 1.0).mean(), rel=1e-4)


def test_compensator_relights_from_a_recent_registered_depth(airway, scene, poses):
    cam = small_camera(64)
    renderer = make_renderer(airway, "cpu")
    pose = poses[0]
    v = render_view(scene, cam, pose, replace(APP, light_offset=1.2e-3), np.random.default_rng(0))
    log_depth = np.log(np.where(v.mask, v.depth, 1.0)) + 3.0  # the encoder's: any offset
    fixed = LightCompensator(LightingConfig(mode="fixed", light_offset_mm=(1.2, 0.0), narrow_mm=100.0))
    assert np.array_equal(fixed(v.rgb, 0.0), v.rgb)  # nothing registered yet: as it is
    fixed.registered(v.rgb, 0.0, log_depth, cam, pose, renderer)
    fixed.idle()  # (its work: what the node does after publishing; else the next frame does it)
    depth, _, _ = fixed._depth
    assert np.allclose(depth[v.mask], v.depth[v.mask], rtol=0.05)  # made metric by the CT at the pose
    relit = fixed(v.rgb, 0.033)
    assert relit.shape == v.rgb.shape and np.abs(relit.astype(int) - v.rgb).mean() > 2
    assert fixed.relit == 1
    assert np.array_equal(fixed(v.rgb, 0.5), v.rgb)  # a depth 0.5 s old: the view has changed
    # a view wider than narrow_mm (median wall distance) is left as it is, and not sampled
    wide = LightCompensator(LightingConfig(mode="fixed", light_offset_mm=(1.2, 0.0), narrow_mm=0.5))
    wide.registered(v.rgb, 0.0, log_depth, cam, pose, renderer)
    assert np.array_equal(wide(v.rgb, 0.033), v.rgb) and wide.relit == 0
    est = LightEstimator(LightingConfig(narrow_mm=0.5))
    assert not est.add(v.rgb.mean(-1) / 255.0, cam.rays() * v.depth[..., None], v.normals, v.mask)
    # auto: nothing applied before the estimate has its frames
    auto = LightCompensator(LightingConfig(mode="auto", min_frames=1000, narrow_mm=100.0))
    auto.registered(v.rgb, 0.0, log_depth, cam, pose, renderer)
    assert np.array_equal(auto(v.rgb, 0.033), v.rgb) and auto.estimator.frames == 1
    assert auto.describe() == "auto: no estimate yet (1 of 1000 narrow views sampled)"
    # the estimate is kept after max_frames samples (their cost ends)
    kept = LightCompensator(LightingConfig(mode="auto", min_frames=1, max_frames=2, every=1, narrow_mm=100.0))
    for k in range(4):
        kept.registered(v.rgb, 0.033 * k, log_depth, cam, pose, renderer)
    assert kept.estimator.frames == 2 and kept.estimator.estimate() is not None
    assert fixed.describe() == "fixed: light at (1.20, 0.00) mm, 1 frames re-lit"


def test_a_registered_frames_work_waits_for_idle_time_or_the_next_frame(airway, scene, poses):
    """The node does the registered frame's work (a render, the estimate's sample) between frames
    (``idle``); without that time the next frame does it first: the same frames out either way."""
    cam = small_camera(64)
    renderer = make_renderer(airway, "cpu")
    cfg = LightingConfig(mode="auto", min_frames=2, every=1, narrow_mm=100.0)
    with_idle, without = LightCompensator(cfg), LightCompensator(cfg)
    for k, pose in enumerate(poses[:4]):
        v = render_view(scene, cam, pose, replace(APP, light_offset=1.5e-3), np.random.default_rng(k))
        log_depth = np.log(np.where(v.mask, v.depth, 1.0))
        a, b = with_idle(v.rgb, 0.033 * k), without(v.rgb, 0.033 * k)
        assert np.array_equal(a, b)
        with_idle.registered(v.rgb, 0.033 * k, log_depth, cam, pose, renderer)
        without.registered(v.rgb, 0.033 * k, log_depth, cam, pose, renderer)
        assert with_idle.estimator.frames == without.estimator.frames == k  # (the work waits...)
        with_idle.idle()
        assert with_idle.estimator.frames == k + 1  # (... for the idle time)
    assert with_idle.relit == without.relit == 2  # (the estimate had its two samples after two frames)
    assert np.array_equal(with_idle.light, without.light) and np.any(with_idle.light)


def test_lighting_config_is_checked_and_read_from_the_navigator_yaml(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        LightingConfig(mode="off")
    with pytest.raises(ValueError, match="light_offset_mm"):
        LightingConfig(light_offset_mm=(np.nan, 0.0))
    assert pipeline_from_yaml(None).lighting == LightingConfig()  # the shipped YAML: the defaults
    src = Path(__file__).parents[1] / "config" / "navigator.yaml"
    text = src.read_text().replace("mode: auto                   # auto", "mode: fixed                  # auto")
    text = text.replace("light_offset_mm: [0.0, 0.0]", "light_offset_mm: [1.0, -0.5]")
    (tmp_path / "nav.yaml").write_text(text)
    cfg = pipeline_from_yaml(tmp_path / "nav.yaml").lighting
    assert cfg.mode == "fixed" and cfg.light_offset_mm == (1.0, -0.5)
