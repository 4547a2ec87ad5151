"""render_view: depth/normals/mask match an independent ray cast; breathing renders the deformed
body without re-meshing; the image model behaves (exposure, misses dark, domains differ)."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures_render import moller_trumbore
from fixtures_sim import small_camera

from bronchopt_ros.render.raycast import Raycaster
from bronchopt_ros.sim.appearance import Appearance, sample_appearance
from bronchopt_ros.sim.breathing import Breathing, BreathingParams
from bronchopt_ros.sim.trajectory import plan_procedure, sample_lumen_poses
from bronchopt_ros.sim.views import Scene, View, render_view


@pytest.fixture(scope="module")
def poses(airway):
    return plan_procedure(airway, np.random.default_rng(3), n_frames=90).poses[::30] + \
        sample_lumen_poses(airway, np.random.default_rng(4), 3)


def test_depth_matches_independent_ray_cast(scene, airway, poses):
    cam = small_camera(24)
    tris = airway.vertices[airway.faces]
    rays = cam.rays(np.float64).reshape(-1, 3)
    for pose in poses:
        v = render_view(scene, cam, pose, Appearance(), np.random.default_rng(0))
        assert isinstance(v, View) and v.rgb.dtype == np.uint8 and v.rgb.shape == (24, 24, 3)
        assert v.depth.dtype == np.float32 and v.normals.dtype == np.float32 and v.mask.dtype == bool
        idx, t = moller_trumbore(pose.t, rays @ pose.R.T, tris)  # brute force, no Embree
        ref = np.where(idx >= 0, t, 0.0).reshape(24, 24)
        assert np.array_equal(v.mask, ref > 0)
        assert np.abs(v.depth - ref).max() < 1e-6  # z-depth (rays have z = 1), float32 precision
        n = v.normals[v.mask]
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
        assert np.all(np.einsum("ij,ij->i", n, cam.rays()[v.mask]) < 0)  # facing the camera
        ref_n = airway.to_trimesh().face_normals[idx[idx >= 0]] @ pose.R
        assert np.allclose(np.abs(np.einsum("ij,ij->i", n, ref_n)), 1.0, atol=1e-4)


def test_geometry_only_and_no_breathing_equivalence(airway, poses):
    cam = small_camera(32)
    s0 = Scene.from_airway(airway, BreathingParams(amplitude=0.0, divergence=0.0, static_rotation=0.0,
                                                   static_shift=0.0))
    assert s0.breathing is None
    v = render_view(s0, cam, poses[0], None)
    ref = Raycaster(airway.vertices, airway.faces).cast(cam, poses[0])
    assert np.array_equal(v.depth, ref.depth) and not v.rgb.any()


def test_breathing_matches_a_rebuilt_deformed_mesh(airway, poses):
    cam = small_camera(48)
    params = BreathingParams(amplitude=0.05, divergence=1.5e-3, seed=3)
    scene = Scene.from_airway(airway, params)
    br = Breathing.for_centerline(params, airway.centerline)
    moved = 0.0
    for pose, t in zip(poses[:4], (0.0, 1.0, 2.0, 3.3)):
        hits, body = scene.cast(cam, pose, t)
        ref = Raycaster(br.deform(airway.vertices, t), airway.faces).cast(cam, body)
        assert np.mean(hits.valid == ref.valid) > 0.995
        both = hits.valid & ref.valid
        dd = np.abs(hits.depth - ref.depth)[both]
        assert np.median(dd) < 1e-6 and np.percentile(dd, 95) < 5e-5
        # the texture coordinate is the CT-space point: it maps onto the body hit
        err = np.linalg.norm(br.deform(hits.point_ct[hits.valid], t) - body.transform(
            hits.depth[hits.valid, None].astype(float) * cam.rays(np.float64)[hits.valid]), axis=1)
        assert np.median(err) < 2e-6 and np.percentile(err, 99) < 2e-5
        moved = max(moved, np.linalg.norm(body.t - pose.t))
        v = render_view(scene, cam, pose, Appearance(), np.random.default_rng(0), t=t)
        assert np.array_equal(v.depth, hits.depth)
    assert moved > 1e-3  # the anatomy really moved against the CT


def test_camera_follows_tissue_and_waveform(airway):
    params = BreathingParams(amplitude=0.03, period_s=4.0)
    br = Breathing.for_centerline(params, airway.centerline)
    assert br.waveform(0.0) == 0.0 and abs(br.waveform(2.0) - 1.0) < 1e-12
    x = airway.vertices[:50]
    assert np.allclose(br.deform(x, 0.0), br.deform(x, 4.0))
    d_full = np.linalg.norm(br.displacement(x, 2.0) - br.displacement(x, 0.0), axis=1)
    assert d_full.max() > 5e-4
    J = br.jacobian(x[0], 2.0)
    assert np.abs(J - np.eye(3)).max() < 0.1  # a small, smooth deformation


def test_image_model(scene, poses):
    cam = small_camera(64)
    rng = np.random.default_rng(1)
    app = Appearance(shot_noise=0.0, read_noise=0.0, blur_sigma=0.0, vignetting=0.0, base_rgb=(0.6, 0.6, 0.6),
                     vessel_contrast=0.0, autogain_target=0.6)
    v = render_view(scene, cam, poses[1], app, rng)
    linear = (v.rgb.astype(float) / 255.0) ** app.gamma
    luma = linear @ [0.299, 0.587, 0.114]
    # auto-gain: the chosen percentile of the lit pixels' linear luma sits at the target
    p = np.percentile(luma[v.mask], app.autogain_percentile)
    assert abs(p - app.autogain_target) < 0.05
    # closer walls are brighter (inverse-square falloff): correlate luma with depth
    m = v.mask
    assert np.corrcoef(luma[m], v.depth[m])[0, 1] < -0.2
    assert v.rgb.std() > 5
    # fixed gain override is honoured; noise changes the picture but not the geometry
    v2 = render_view(scene, cam, poses[1], Appearance(), rng, gain=v.gain)
    assert v2.gain == v.gain and np.array_equal(v2.depth, v.depth)


def test_light_guide_direction(scene, poses):
    """The light guide's direction beside the lens (light_angle) changes the shading: turned by
    180 deg a 1.5 mm offset moves the image's luma by over 10 %, and differently for x and y."""
    from dataclasses import replace

    cam = small_camera(64)
    app = Appearance(shot_noise=0.0, read_noise=0.0, blur_sigma=0.0, vignetting=0.0, base_rgb=(0.6, 0.6, 0.6),
                     vessel_contrast=0.0, texture_contrast=0.0, specular_strength=0.0, light_offset=1.5e-3)
    gain = render_view(scene, cam, poses[1], app, np.random.default_rng(0)).gain

    def luma(angle):
        v = render_view(scene, cam, poses[1], replace(app, light_angle=angle), np.random.default_rng(0), gain=gain)
        return (v.rgb.astype(float) / 255.0) ** app.gamma @ [0.299, 0.587, 0.114], v.mask

    (l0, m), (l90, _), (l180, _), (l270, _) = (luma(a) for a in (0.0, 90.0, 180.0, 270.0))
    # (which side gains depends on the view: nearer the light, but lit at a grazing angle)
    assert np.abs(l0 - l180)[m].mean() > 0.1 * l0[m].mean()
    assert np.allclose(l0, luma(360.0)[0], atol=0.01)
    # the x offset's change is not the y offset's
    assert abs(np.corrcoef((l0 - l180)[m], (l90 - l270)[m])[0, 1]) < 0.5


def test_appearance_domains_disjoint():
    rng = np.random.default_rng(0)
    tr = [sample_appearance(rng, "train") for _ in range(200)]
    te = [sample_appearance(rng, "test") for _ in range(200)]
    assert {a.texture_family for a in tr} == {"fbm"} and {a.texture_family for a in te} == {"ridged"}
    assert max(a.vessel_contrast for a in tr) < min(a.vessel_contrast for a in te)
    assert max(a.shininess for a in tr) < min(a.shininess for a in te)
    assert max(a.light_offset for a in tr) < min(a.light_offset for a in te)
    a = tr[0]
    assert Appearance.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError):
        sample_appearance(rng, "other")


def test_a_light_offset_range_replaces_only_the_light_offset():
    """``bronchopt train --light-offset``: a given scope's light guide, every other setting drawn as before."""
    for domain in ("train", "test"):
        plain = [sample_appearance(np.random.default_rng(s), domain) for s in range(20)]
        scope = [sample_appearance(np.random.default_rng(s), domain, (1.0e-3, 1.4e-3)) for s in range(20)]
        for a, b in zip(plain, scope):
            assert 1.0e-3 <= b.light_offset <= 1.4e-3
            assert {k: v for k, v in b.to_dict().items() if k != "light_offset"} == \
                {k: v for k, v in a.to_dict().items() if k != "light_offset"}
    for bad in ((1e-3, 0.5e-3), (-1e-4, 1e-3), (0.0, 0.02)):
        with pytest.raises(ValueError, match="light_offset"):
            sample_appearance(np.random.default_rng(0), "train", bad)
