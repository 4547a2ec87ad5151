"""The encoder: model shapes and invariances, losses, the runtime API, the shipped weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bronchopt_ros.encoder import EncoderConfig, ModelConfig, RGBEncoding, load_encoder, save_checkpoint
from bronchopt_ros.encoder.data import PairConfig, PairGenerator, ToyWorld, collate
from bronchopt_ros.encoder.losses import (dense_infonce, depth_ranking, embedding_infonce, gradient_matching,
                                          pose_ranking, si_log)
from bronchopt_ros.encoder.model import EncoderNet, depth_input, masked_resize, similarity
from bronchopt_ros.encoder.runtime import shipped_weights


@pytest.fixture(scope="module")
def toy_samples():
    gen = PairGenerator([ToyWorld(0)], PairConfig(size=64, n_perturb=2))
    rng = np.random.default_rng(0)
    return [gen.sample(rng) for _ in range(3)]


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory):
    torch.manual_seed(0)
    path = save_checkpoint(EncoderNet(ModelConfig()).eval(), tmp_path_factory.mktemp("w") / "enc.pt", half=False)
    return load_encoder(EncoderConfig(backend="torch", weights=path, input_size=64))


# ------------------------------------------------------------------------------------ model
def test_rgb_outputs_shapes_and_normalisation():
    torch.manual_seed(0)
    net = EncoderNet(ModelConfig()).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net.forward_rgb(x)
    assert out["log_depth"].shape == (2, 1, 64, 64)
    assert out["features"].shape == (2, net.cfg.feature_dim, 32, 32)
    assert out["embedding"].shape == (2, net.cfg.embed_dim)
    assert torch.allclose(out["features"].norm(dim=1), torch.ones(2, 32, 32), atol=1e-4)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert out["normals"].shape == (2, 3, 64, 64)


def test_depth_branch_is_scale_invariant_and_differentiable():
    torch.manual_seed(0)
    net = EncoderNet(ModelConfig()).eval()
    d = torch.rand(1, 1, 64, 64) * 0.04 + 0.005
    d[..., :5, :] = 0.0  # a missing band
    f1, v1, _ = net.forward_depth(d, None, 32)
    f2, v2, _ = net.forward_depth(d * 3.7, None, 32)
    assert torch.equal(v1, v2)
    assert torch.allclose(f1, f2, atol=1e-5)  # only relative depth matters (a frame has no scale)
    assert (f1[:, :, :2].abs().sum() == 0) and not v1[..., :2, :].any()  # invalid cells carry no features
    dd = d.clone().requires_grad_()
    f, v, _ = net.forward_depth(dd, None, 32)
    ref = torch.randn_like(f)
    similarity(f, F_normalize(ref), v).sum().backward()
    assert dd.grad is not None and torch.isfinite(dd.grad).all() and dd.grad.abs().sum() > 0


def F_normalize(x):
    return torch.nn.functional.normalize(x, dim=1)


def test_masked_resize_averages_valid_pixels_only():
    d = torch.full((1, 1, 4, 4), 2.0)
    v = torch.ones_like(d, dtype=torch.bool)
    d[..., 0, 0] = 100.0
    v[..., 0, 0] = False
    r, rv = masked_resize(d, v, 2)
    assert rv.all() and torch.allclose(r, torch.full_like(r, 2.0))
    x, m = depth_input(d * v, None, 2)
    assert torch.allclose(x[:, 0], torch.zeros(1, 2, 2), atol=1e-6)  # zero median of a flat map


# ------------------------------------------------------------------------------------ losses
def test_si_log_ignores_scale_and_sees_shape():
    t = torch.log(torch.rand(2, 1, 16, 16) + 0.1)
    m = torch.ones_like(t, dtype=torch.bool)
    assert si_log(t + 1.3, t, m) < 1e-5
    assert si_log(t * 1.5, t, m) > 0.05
    assert gradient_matching(t + 0.7, t, m) < 1e-6


def test_contrastive_losses_prefer_aligned_features():
    torch.manual_seed(0)
    f = F_normalize(torch.randn(2, 8, 6, 6))
    wrong = F_normalize(torch.randn(2, 2, 8, 6, 6))
    v = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    vk = torch.ones(2, 2, 1, 6, 6, dtype=torch.bool)
    good = dense_infonce(f, f, v, wrong, vk, n_pixels=16)
    bad = dense_infonce(f, F_normalize(torch.randn(2, 8, 6, 6)), v, wrong, vk, n_pixels=16)
    assert good < bad
    loss, acc = pose_ranking(f, f, v, wrong, vk)
    assert acc == 1.0 and loss < 0.1
    e = F_normalize(torch.randn(4, 16))
    assert embedding_infonce(e, e) < embedding_infonce(e, F_normalize(torch.randn(4, 16)))


def test_depth_ranking_prefers_the_pose_whose_depth_the_prediction_matches():
    """The depth-ranking loss (the tracker's SI objective as a contest between poses): a prediction
    equal to the true pose's log-depth up to scale wins every contest; one equal to a perturbed
    pose's loses that one; a perturbed depth with too few common pixels does not count."""
    torch.manual_seed(0)
    true = torch.randn(2, 1, 16, 16)
    pert = true.unsqueeze(1) + 0.3 * torch.randn(2, 3, 1, 16, 16)
    m = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    mk = torch.ones(2, 3, 1, 16, 16, dtype=torch.bool)
    loss, acc = depth_ranking(true + 0.7, true, m, pert, mk)  # an offset is a scale: SI ignores it
    assert acc == 1.0 and loss < 1e-3
    loss_bad, acc_bad = depth_ranking(pert[:, 1], true, m, pert, mk)
    assert acc_bad == 0.0 and loss_bad > loss
    mk[:, 1] = False  # nothing in common with perturbed pose 1: that contest is left out
    _, acc_skip = depth_ranking(pert[:, 1] * 0 + true + 0.01 * torch.randn_like(true), true, m, pert, mk)
    assert acc_skip == 1.0
    pred = true.clone().requires_grad_(True)
    depth_ranking(pred + 0.1 * torch.randn_like(true), true, m, pert, mk)[0].backward()
    assert torch.isfinite(pred.grad).all()


# ------------------------------------------------------------------------------------ data
def test_toy_pairs_are_consistent(toy_samples):
    s = toy_samples[0]
    assert s["rgb"].shape == (64, 64, 3) and s["rgb"].dtype == np.uint8
    assert s["depth_pert"].shape == (2, 64, 64)
    assert (s["depth_ct"] > 0).mean() > 0.3
    np.testing.assert_allclose(s["depth"], s["depth_ct"])  # no breathing in the toy world
    b = collate(toy_samples)
    assert b["rgb"].shape == (3, 3, 64, 64) and b["rgb"].max() <= 1.0
    assert b["depth_pert"].shape == (3, 2, 1, 64, 64)


# ------------------------------------------------------------------------------------ runtime API
def test_runtime_api(random_encoder, toy_samples):
    enc = random_encoder
    assert enc.backend_name == "torch"
    s = toy_samples[0]
    out = enc.encode_rgb(s["rgb"])
    assert isinstance(out, RGBEncoding)
    assert out.log_depth.shape == (64, 64) and out.confidence.shape == (64, 64)
    assert out.features.shape == (enc.feature_dim, enc.grid, enc.grid)
    assert out.embedding.shape == (enc.embed_dim,)
    assert float(out.confidence.min()) >= 0.0 and float(out.confidence.max()) <= 1.0
    # without the embedding (what tracking asks for): the same outputs, the embedding made on demand
    lazy = enc.encode_rgb(s["rgb"], embedding=False)
    assert lazy.embedding is None and torch.equal(lazy.log_depth, out.log_depth)
    assert torch.allclose(enc.embed_rgb(lazy), out.embedding, atol=1e-5)
    assert enc.embed_rgb(out) is out.embedding
    hit = out.hit_prob > 0.5
    if hit.any():
        assert abs(float(out.log_depth[hit].median())) < 1e-5
    # the same frame as a tensor (3, H, W) float, and at another resolution
    out2 = enc.encode_rgb(torch.from_numpy(s["rgb"]).permute(2, 0, 1).float() / 255.0)
    assert torch.allclose(out.features, out2.features, atol=1e-5)
    assert enc.encode_rgb(np.zeros((100, 120, 3), np.uint8)).features.shape == out.features.shape
    # depth side: single vs batch, mask, differentiability, embedding
    d = torch.from_numpy(np.stack([s["depth_ct"], s["depth_pert"][0]]))
    fb = enc.encode_depth(d)
    f0 = enc.encode_depth(d[0])
    assert torch.allclose(fb[0], f0, atol=1e-6)
    m = enc.depth_mask(d[0])
    assert m.shape == (enc.grid, enc.grid) and torch.equal(m, f0.abs().sum(0) > 0)
    sim = enc.similarity(out.features, f0)
    assert -1.0 <= float(sim) <= 1.0
    assert abs(float(enc.similarity(f0, f0)) - 1.0) < 1e-5
    dd = d[0].clone().requires_grad_()
    enc.similarity(out.features, enc.encode_depth(dd)).backward()
    assert torch.isfinite(dd.grad).all() and dd.grad.abs().sum() > 0
    e = enc.embed_depth(d[0])
    assert e.shape == (enc.embed_dim,) and abs(float(e.norm()) - 1.0) < 1e-5
    assert enc.grid_camera(s["camera"]).width == enc.grid


def test_bad_inputs_raise(random_encoder):
    with pytest.raises(ValueError):
        random_encoder.encode_rgb(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError):
        EncoderConfig(backend="cuda-magic")
    with pytest.raises(ValueError):
        EncoderConfig(input_size=100)
    with pytest.raises(FileNotFoundError):
        load_encoder(EncoderConfig(weights="/nonexistent/enc.pt"))


# ------------------------------------------------------------------------------------ shipped weights
needs_weights = pytest.mark.skipif(not shipped_weights().exists(), reason="shipped weights not trained yet")


@needs_weights
def test_shipped_weights_rank_true_pose_first():
    """The shipped encoder on a few validation frames: the true pose's similarity (the features', and
    the predicted depth's SI fit) beats 2 mm and 0.1 rad perturbations (the full evidence is
    test_encoder_evidence.py, marked slow)."""
    from bronchopt_ros.encoder.evaluate import ranking
    from bronchopt_ros.encoder.sim_world import validation_worlds

    from bronchopt_ros.encoder.evaluate import eval_frames

    enc = load_encoder(EncoderConfig(backend="torch"))
    assert enc.weights.stat().st_size < 5 * 2 ** 20
    frames = eval_frames(validation_worlds(1), 6, enc.input_size, "train", seed=1)
    res = ranking(enc, frames, perturbations=(("t", 0.002), ("r", 0.1)), n_dirs=2, seed=1)
    assert res["rank_2mm"] >= 0.75 and res["rank_0.1rad"] >= 0.75, res
    assert res["depth_rank_2mm"] >= 0.75 and res["depth_rank_0.1rad"] >= 0.75, res  # the tracker's objective
