"""Gauss-Newton on the paper's objective (dense encoder features): with the RGB features replaced
by the depth features at the true pose (a perfectly modality-invariant encoder), LM from a
perturbed start converges to the truth; so the batched finite-difference feature Jacobian and the
closed-form depth Jacobian are consistent."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_render import MM, y_airway
from bronchopt_ros.encoder import EncoderConfig, load_encoder
from bronchopt_ros.encoder.runtime import shipped_weights
from bronchopt_ros.geometry import Camera, Pose
from bronchopt_ros.registration import FeatureGNConfig, register_features_gn
from bronchopt_ros.render.base import make_renderer

pytestmark = pytest.mark.skipif(not shipped_weights().exists(), reason="no shipped encoder weights")
CAM = Camera(200, 200, 110.2, 110.3, 100.6, 103.7)


@pytest.fixture(scope="module")
def perfect():
    """Renderer, encoder, the true pose (in the trachea, looking down at the carina), the depth
    features there as the "RGB" features, and a start 1.75 mm / 0.05 rad away."""
    torch.set_num_threads(1)
    renderer = make_renderer(y_airway())
    encoder = load_encoder(EncoderConfig(backend="torch"))
    gt = Pose(np.diag([1.0, -1.0, -1.0]), np.array([0.0, 1.0, 30.0]) * MM)
    out = renderer.render(CAM.scaled(64), gt, normals=False)
    with torch.no_grad():
        f_true = encoder.encode_depth(out.depth, out.valid)
    start = Pose(gt.R, gt.t + np.array([1.0, -0.8, 1.2]) * MM).retract([0, 0, 0, 0.04, -0.03, 0.02])
    return renderer, encoder, gt, f_true, start


def test_feature_gn_converges_with_perfect_features(perfect):
    renderer, encoder, gt, f_true, start = perfect
    res = register_features_gn(renderer, encoder, f_true, CAM, [start], FeatureGNConfig(iterations=15))
    assert res.inside and res.cost < 0.05
    assert res.pose.translation_error(gt) < 0.01 * MM  # from 1.75 mm / 0.05 rad
    assert res.pose.rotation_error(gt) < 1e-3


@pytest.mark.parametrize("mode", ["features_gn", "features"])
def test_tracker_dispatches_the_feature_modes(mode):
    """Both feature modes run through the tracker with the real encoder from one start and report
    the depth-image agreement of their result."""
    from bronchopt_ros.pipeline import EncoderDepthPredictor
    from bronchopt_ros.tracker import Frame, Tracker, TrackerConfig

    torch.set_num_threads(1)
    renderer = make_renderer(y_airway())
    predictor = EncoderDepthPredictor(load_encoder(EncoderConfig(backend="torch")))
    tracker = Tracker(renderer, predictor, TrackerConfig(mode=mode))
    gt = Pose(np.diag([1.0, -1.0, -1.0]), np.array([0.0, 1.0, 30.0]) * MM)
    shade = renderer.render(CAM, gt, normals=False).depth.numpy()
    rgb = (255 * np.clip(np.where(shade > 0, 0.004 / np.maximum(shade, 1e-3), 0), 0, 1)).astype(np.uint8)
    reg, conf = tracker.register_once(Frame(np.repeat(rgb[..., None], 3, -1), CAM, 0.0), gt)
    assert reg.inside and reg.valid_fraction > 0.5 and np.isfinite(reg.si_error) and 0.0 <= conf <= 1.0
    assert reg.iterations > 0


def test_feature_gn_prior_holds_the_prediction(perfect):
    """The pose prior (the tracker's odometry prediction) enters the feature solver like the depth
    solver's: a prior at the truth does not stop the convergence; a tight prior 1 mm off keeps the
    solution at it, against perfect features."""
    from bronchopt_ros.registration import PosePrior

    renderer, encoder, gt, f_true, start = perfect
    cfg = FeatureGNConfig(iterations=15)
    loose = register_features_gn(renderer, encoder, f_true, CAM, [start], cfg, prior=PosePrior(gt, 1 * MM, 0.05))
    assert loose.pose.translation_error(gt) < 0.01 * MM
    off = Pose(gt.R, gt.t + np.array([0.7, 0.0, -0.7]) * MM)
    tight = register_features_gn(renderer, encoder, f_true, CAM, [start], cfg, prior=PosePrior(off, 0.01 * MM, 0.001))
    assert tight.pose.translation_error(off) < 0.05 * MM and tight.pose.translation_error(gt) > 0.8 * MM
