"""Inference backends of the RGB side (the once-per-frame network).

All three run :class:`~bronchopt_ros.encoder.model.RGBGraph` and return its raw outputs
``(dense, features, embedding)`` as torch tensors on the encoder's device:

* :class:`TorchBackend` — eager torch (CPU or CUDA); always available.
* :class:`OnnxBackend` — ONNX Runtime on CPU. The graph is exported with
  ``torch.onnx.export(dynamo=True, opset_version=18)`` with dynamic batch / height / width
  (multiples of 16); a copy ships next to the weights, other weights are exported once into
  ``~/.cache/bronchopt`` (keyed by the weights' hash).
* :class:`TensorRTBackend` — torch-tensorrt (``torch_tensorrt.compile``, dynamo IR, fp16) on CUDA.

The depth side (per optimiser iteration, needs gradients) always runs in eager torch.
:func:`make_backend` picks one by :class:`~bronchopt_ros.encoder.config.EncoderConfig` with
automatic fallback and says why in the log.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from .model import RGBGraph, rgb_input

__all__ = ["TorchBackend", "OnnxBackend", "TensorRTBackend", "make_backend", "export_onnx", "onnx_path_for",
           "file_hash", "default_cache_dir", "fuse_conv_bn"]

log = logging.getLogger("bronchopt.encoder")
ONNX_OPSET = 18
_OUTPUTS = ["dense", "features", "embedding"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BRONCHOPT_CACHE", Path.home() / ".cache" / "bronchopt"))


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def fuse_conv_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into that
    convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the BatchNorm becomes an Identity),
    in place; for inference (eval mode) only. Same outputs up to float rounding."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        if isinstance(child, torch.nn.Sequential):
            for i in range(len(child) - 1):
                if isinstance(child[i], torch.nn.Conv2d) and isinstance(child[i + 1], torch.nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(child[i], child[i + 1])
                    child[i + 1] = torch.nn.Identity()
        fuse_conv_bn(child)
    return module


class TorchBackend:
    """Eager torch on the graph's device, with each BatchNorm folded into its convolution
    (:func:`fuse_conv_bn`: 14.7 -> 13.1 ms per 128 px frame on one core here). On the CPU the graph
    runs in the channels-last memory format, which oneDNN's convolutions take without reordering
    (same outputs to 1e-5; 13 instead of 17-19 ms per frame)."""

    name = "torch"

    def __init__(self, graph: RGBGraph, device: torch.device):
        self.device = device
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        graph = copy.deepcopy(graph).eval()  # its modules are the encoder's own: leave those as they are
        self.graph = fuse_conv_bn(graph).to(device, memory_format=self.memory_format)

    @torch.no_grad()
    def __call__(self, rgb01: torch.Tensor, embedding: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The graph's outputs; ``embedding=False`` leaves the embedding out (None; ~1.3 ms of 13:
        it is needed only to relocalise, :meth:`embed` makes it later)."""
        x = rgb01.to(self.device).contiguous(memory_format=self.memory_format)
        if embedding:
            return tuple(t.contiguous() for t in self.graph(x))
        dense, feats = self.graph.rgb(rgb_input(x))
        return dense.contiguous(), feats.contiguous(), None

    @torch.no_grad()
    def embed(self, log_depth: torch.Tensor, hit_prob: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The embedding of outputs made with ``embedding=False`` (see ``RGBGraph.embed_from``)."""
        fmt = self.memory_format
        return self.graph.embed_from(log_depth.to(self.device).contiguous(memory_format=fmt),
                                     hit_prob.to(self.device).contiguous(memory_format=fmt),
                                     feats.to(self.device).contiguous(memory_format=fmt)).contiguous()


# ------------------------------------------------------------------------------------ ONNX Runtime
def export_onnx(graph: RGBGraph, path: str | Path, input_size: int = 128, meta: dict | None = None) -> Path:
    """Export the RGB graph to a single-file ONNX model (opset 18, dynamic batch/height/width)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = graph.eval().cpu()
    x = torch.rand(1, 3, input_size, input_size)
    B = torch.export.Dim("B", min=1, max=256)
    H = torch.export.Dim("H", min=2, max=128)
    W = torch.export.Dim("W", min=2, max=128)
    tmp = path.with_suffix(".tmp.onnx")
    prog = torch.onnx.export(graph, (x,), dynamo=True, opset_version=ONNX_OPSET, input_names=["rgb"],
                             output_names=_OUTPUTS, dynamic_shapes={"rgb01": {0: B, 2: 16 * H, 3: 16 * W}},
                             verbose=False)
    prog.save(str(tmp))
    model = onnx.load(str(tmp), load_external_data=True)
    for k, v in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    onnx.save_model(model, str(path), save_as_external_data=False)
    for p in (tmp, Path(str(tmp) + ".data")):
        if p.exists():
            p.unlink()
    data = Path(str(path) + ".data")
    if data.exists():
        data.unlink()
    return path


def onnx_metadata(path: str | Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def onnx_path_for(weights: Path, weights_sha: str, cache_dir: str | Path | None) -> tuple[Path, bool]:
    """Where the ONNX export of ``weights`` is (or goes): the shipped ``<weights>.onnx`` when its
    recorded hash matches, else ``<cache>/encoder-<sha>.onnx``. Returns (path, exists)."""
    shipped = weights.with_suffix(".onnx")
    if shipped.exists():
        try:
            if onnx_metadata(shipped).get("weights_sha256") == weights_sha:
                return shipped, True
        except Exception as exc:  # unreadable file: ignore it, export to the cache
            log.warning("ignoring unreadable ONNX file %s: %s", shipped, exc)
    cached = Path(cache_dir or default_cache_dir()) / f"encoder-{weights_sha}.onnx"
    return cached, cached.exists()


class OnnxBackend:
    """ONNX Runtime, CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, num_threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.path = Path(path)
        self.device = torch.device("cpu")

    def __call__(self, rgb01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = np.ascontiguousarray(rgb01.detach().cpu().numpy(), dtype=np.float32)
        outs = self.session.run(_OUTPUTS, {"rgb": x})
        return tuple(torch.from_numpy(o) for o in outs)


# ------------------------------------------------------------------------------------ TensorRT
class TensorRTBackend:
    """torch-tensorrt compilation (dynamo IR, fp16) for CUDA; the input size is fixed at compile time."""

    name = "tensorrt"

    def __init__(self, graph: RGBGraph, device: torch.device, input_size: int):
        import torch_tensorrt  # noqa: F401  (guarded by make_backend)

        if device.type != "cuda":
            raise RuntimeError("TensorRT needs a CUDA device")
        self.device = device
        self.input_size = int(input_size)
        graph = graph.eval().to(device).half()
        x = torch.rand(1, 3, self.input_size, self.input_size, device=device, dtype=torch.half)
        self.module = torch_tensorrt.compile(
            graph, ir="dynamo", inputs=[torch_tensorrt.Input(tuple(x.shape), dtype=torch.half)],
            enabled_precisions={torch.half}, truncate_double=True)
        self.module(x)

    @torch.no_grad()
    def __call__(self, rgb01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = rgb01.to(self.device, torch.half)
        outs = []
        for i in range(x.shape[0]):  # compiled for batch 1
            outs.append(self.module(x[i:i + 1]))
        return tuple(torch.cat([o[j] for o in outs]).float() for j in range(3))


# ------------------------------------------------------------------------------------ choice
def _time(fn, x: torch.Tensor, reps: int = 5) -> float:
    fn(x)
    fn(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps * 1e3


def make_backend(graph: RGBGraph, backend: str, device: torch.device, input_size: int, weights: Path | None,
                 weights_sha: str | None, cache_dir=None, num_threads: int | None = None):
    """The backend ``backend`` asks for, or the best available fallback. Returns (backend, reason)."""
    torch_be = TorchBackend(graph, device)
    if backend == "torch":
        return torch_be, "asked for"
    if backend == "tensorrt" or (backend == "auto" and device.type == "cuda"):
        if backend == "auto":
            return torch_be, "auto on CUDA: eager torch (ask for backend='tensorrt' to compile)"
        if device.type != "cuda":
            return torch_be, "fallback: TensorRT needs device='cuda'"
        try:
            return TensorRTBackend(graph, device, input_size), "asked for (fp16)"
        except ImportError as exc:
            return torch_be, f"fallback: torch_tensorrt is not installed ({exc})"
        except Exception as exc:  # compilation failure
            return torch_be, f"fallback: TensorRT compilation failed ({type(exc).__name__}: {exc})"
    # onnx or auto on CPU
    if device.type != "cpu":
        return torch_be, "fallback: the ONNX Runtime backend runs on CPU only"
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return torch_be, f"fallback: onnxruntime is not installed ({exc})"
    if weights is None or weights_sha is None:
        return torch_be, "fallback: no weights file to key the ONNX export on"
    try:
        path, exists = onnx_path_for(weights, weights_sha, cache_dir)
        if not exists:
            log.info("exporting the encoder to ONNX: %s (once)", path)
            export_onnx(graph, path, input_size, {"weights_sha256": weights_sha})
        onnx_be = OnnxBackend(path, num_threads)
    except Exception as exc:
        return torch_be, f"fallback: ONNX export/load failed ({type(exc).__name__}: {exc})"
    if backend == "onnx":
        return onnx_be, f"asked for ({path.name})"
    x = torch.rand(1, 3, input_size, input_size)
    t_onnx, t_torch = _time(onnx_be, x), _time(torch_be, x)
    if t_onnx < t_torch:
        return onnx_be, f"auto: faster here ({t_onnx:.1f} ms vs torch {t_torch:.1f} ms at {input_size} px)"
    return torch_be, f"auto: faster here ({t_torch:.1f} ms vs onnxruntime {t_onnx:.1f} ms at {input_size} px)"
