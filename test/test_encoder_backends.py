"""Encoder inference backends: ONNX Runtime parity with eager torch (CPU), automatic choice and
fallbacks, TensorRT parity (CUDA only), the optional timm trunk (skipped where timm is broken)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bronchopt_ros.encoder import EncoderConfig, ModelConfig, load_encoder, save_checkpoint
from bronchopt_ros.encoder.backends import export_onnx, onnx_metadata
from bronchopt_ros.encoder.model import EncoderNet
from bronchopt_ros.encoder.runtime import shipped_weights

pytest.importorskip("onnxruntime")


def _frame(size: int = 96, seed: int = 0) -> np.ndarray:
    """A lumen-like test image: dark centre, bright rim, some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    r = np.sqrt((xx - 0.1) ** 2 + yy ** 2)
    img = np.clip(r * 2.0, 0, 1)[..., None] * np.array([0.9, 0.45, 0.4]) + rng.normal(0, 0.03, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _assert_same(a, b, atol=1e-4):
    for name in ("log_depth", "confidence", "features", "embedding", "hit_prob"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.allclose(x.float().cpu(), y.float().cpu(), atol=atol), (name, float((x - y).abs().max()))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    if shipped_weights().exists():
        return shipped_weights()
    torch.manual_seed(1)
    return save_checkpoint(EncoderNet(ModelConfig()).eval(), tmp_path_factory.mktemp("w") / "enc.pt")


def test_onnx_matches_torch(weights, tmp_path, caplog):
    """Shipped ONNX (or one exported into the cache) gives the same encodings as eager torch."""
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="bronchopt.encoder"):
        enc_o = load_encoder(EncoderConfig(backend="onnx", weights=weights, input_size=128, cache_dir=cache))
    assert enc_o.backend_name == "onnxruntime", enc_o.backend_reason
    assert any("encoder backend: onnxruntime" in r.message for r in caplog.records)
    enc_t = load_encoder(EncoderConfig(backend="torch", weights=weights, input_size=128))
    for seed in (0, 1):
        _assert_same(enc_o.encode_rgb(_frame(seed=seed)), enc_t.encode_rgb(_frame(seed=seed)))
    # the exported graph has dynamic sizes: another input size works with the same file
    enc_o64 = load_encoder(EncoderConfig(backend="onnx", weights=weights, input_size=64, cache_dir=cache))
    enc_t64 = load_encoder(EncoderConfig(backend="torch", weights=weights, input_size=64))
    assert enc_o64.backend_name == "onnxruntime"
    _assert_same(enc_o64.encode_rgb(_frame()), enc_t64.encode_rgb(_frame()))


def test_torch_backend_folds_batchnorm_into_the_convolutions(weights):
    """The eager backend runs a copy of the graph with every BatchNorm folded into its convolution:
    the same outputs as the encoder's own (unfused) graph, whose modules are left as they were."""
    from bronchopt_ros.encoder.backends import TorchBackend

    enc = load_encoder(EncoderConfig(backend="torch", weights=weights, input_size=128))
    backend = enc._backend
    assert isinstance(backend, TorchBackend)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.graph.modules())
    own = enc.net.rgb_graph().eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in own.modules())
    x = enc._rgb_tensor(_frame(seed=2))
    with torch.no_grad():
        for fused, plain in zip(backend(x), own(x)):
            assert torch.allclose(fused, plain, atol=1e-4), float((fused - plain).abs().max())


def test_auto_picks_a_backend_and_says_why(weights, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bronchopt.encoder"):
        enc = load_encoder(EncoderConfig(backend="auto", weights=weights, cache_dir=tmp_path))
    assert enc.backend_name in ("torch", "onnxruntime")
    assert enc.backend_reason.startswith("auto")
    assert any("encoder backend" in r.message for r in caplog.records)


def test_tensorrt_on_cpu_falls_back_to_torch(weights):
    enc = load_encoder(EncoderConfig(backend="tensorrt", weights=weights, device="cpu"))
    assert enc.backend_name == "torch" and "fallback" in enc.backend_reason


@pytest.mark.slow
def test_onnx_export_of_new_weights(tmp_path):
    """Weights without a shipped .onnx are exported once into the cache and tagged with their hash."""
    torch.manual_seed(3)
    w = save_checkpoint(EncoderNet(ModelConfig()).eval(), tmp_path / "fresh.pt")
    enc = load_encoder(EncoderConfig(backend="onnx", weights=w, cache_dir=tmp_path / "c"))
    assert enc.backend_name == "onnxruntime"
    files = list((tmp_path / "c").glob("encoder-*.onnx"))
    assert len(files) == 1 and "weights_sha256" in onnx_metadata(files[0])
    ref = load_encoder(EncoderConfig(backend="torch", weights=w))
    _assert_same(enc.encode_rgb(_frame()), ref.encode_rgb(_frame()))


def test_export_onnx_roundtrip_small(tmp_path):
    """export_onnx writes one self-contained file whose outputs match torch (64 px, random weights)."""
    import onnxruntime as ort

    torch.manual_seed(2)
    net = EncoderNet(ModelConfig(channels=(8, 16, 16, 24, 32), feature_dim=16, embed_dim=32)).eval()
    path = export_onnx(net.rgb_graph(), tmp_path / "g.onnx", 64, {"weights_sha256": "x"})
    assert not (tmp_path / "g.onnx.data").exists()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 64)
    outs = sess.run(None, {"rgb": x.numpy()})
    with torch.no_grad():
        ref = net.rgb_graph().eval()(x)
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-4)


@pytest.mark.gpu
def test_tensorrt_matches_torch_cuda(weights):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    pytest.importorskip("torch_tensorrt")
    enc_trt = load_encoder(EncoderConfig(backend="tensorrt", weights=weights, device="cuda"))
    assert enc_trt.backend_name == "tensorrt", enc_trt.backend_reason
    enc_t = load_encoder(EncoderConfig(backend="torch", weights=weights, device="cuda"))
    a, b = enc_trt.encode_rgb(_frame()), enc_t.encode_rgb(_frame())
    # fp16 engine vs fp32 eager
    assert torch.nn.functional.cosine_similarity(a.features.flatten(), b.features.flatten(), dim=0) > 0.99
    assert (a.log_depth - b.log_depth).abs().median() < 0.02


@pytest.mark.gpu
def test_cuda_torch_matches_cpu(weights):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    enc_c = load_encoder(EncoderConfig(backend="auto", weights=weights, device="cuda"))
    assert enc_c.backend_name == "torch"
    enc_cpu = load_encoder(EncoderConfig(backend="torch", weights=weights))
    _assert_same(enc_c.encode_rgb(_frame()), enc_cpu.encode_rgb(_frame()), atol=1e-3)
    d = torch.rand(96, 96) * 0.03 + 0.005
    fd = enc_c.encode_depth(d.cuda().requires_grad_())
    assert torch.allclose(fd.cpu(), enc_cpu.encode_depth(d), atol=1e-3)


def test_timm_trunk_optional(tmp_path):
    """A timm backbone as the trunk, weights from a local file (skipped where timm cannot import)."""
    from bronchopt_ros.encoder.timm_trunk import timm_available

    ok, why = timm_available()
    if not ok:
        pytest.skip(f"timm unavailable here: {why}")
    import timm

    name = "resnet18"
    src = timm.create_model(name, pretrained=False)
    wfile = tmp_path / "resnet18_local.pth"
    torch.save(src.state_dict(), wfile)
    net = EncoderNet(ModelConfig(backbone=name, backbone_weights=str(wfile))).eval()
    torch.testing.assert_close(net.rgb.trunk.model.conv1.weight, src.conv1.weight)
    with torch.no_grad():
        out = net.forward_rgb(torch.rand(1, 3, 128, 128))
    assert out["log_depth"].shape == (1, 1, 128, 128)
    assert out["features"].shape == (1, net.cfg.feature_dim, 64, 64)
