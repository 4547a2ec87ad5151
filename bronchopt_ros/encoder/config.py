"""Configuration dataclasses of the encoder (architecture and runtime)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["ModelConfig", "EncoderConfig", "BACKENDS"]

BACKENDS = ("auto", "torch", "onnx", "tensorrt")


@dataclass
class ModelConfig:
    """Architecture of :class:`bronchopt_ros.encoder.model.EncoderNet` (saved with the weights).

    ``channels`` are the widths of the RGB U-Net's encoder stages (each stage halves the
    resolution; the first runs at ``1/stem_stride`` of the input, and a light stride-1 refinement
    that also sees the image gives the full-resolution maps). ``feature_dim`` is the width of the dense
    features, which live at ``1/feature_stride`` of the input resolution on both sides (RGB and
    depth). ``depth_channels`` are the widths of the light depth branch (what runs per optimiser
    iteration). ``embed_dim`` is the global embedding's size. ``backbone`` = ``"unet"`` (ours) or a
    timm model name (then ``backbone_weights`` is a local checkpoint file, see ``timm_trunk``).
    """

    channels: tuple[int, ...] = (24, 32, 48, 64, 96)
    stem_stride: int = 2
    feature_dim: int = 32
    feature_stride: int = 2
    depth_channels: tuple[int, int] = (16, 32)
    embed_dim: int = 64
    normals_head: bool = True
    backbone: str = "unet"
    backbone_weights: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["depth_channels"] = list(self.depth_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("channels", "depth_channels"):
            if k in d:
                d[k] = tuple(int(c) for c in d[k])
        return cls(**d)


@dataclass
class EncoderConfig:
    """How to load and run the encoder.

    * ``backend``: ``"auto"`` (ONNX Runtime on CPU when it is faster than eager torch, eager torch
      on CUDA), ``"torch"``, ``"onnx"`` (ONNX Runtime CPU) or ``"tensorrt"`` (torch-tensorrt, CUDA,
      fp16). Anything unavailable falls back to eager torch with a log line saying why.
    * ``weights``: a checkpoint path; ``None`` = the shipped weights (``encoder/weights/``).
    * ``input_size``: side of the square grid the RGB frame is resized to (multiple of 16).
    * ``device``: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).
    * ``num_threads``: torch / ONNX Runtime intra-op threads (``None`` = leave torch's setting).
    * ``cache_dir``: where exported ONNX / TensorRT artefacts go (default ``~/.cache/bronchopt``).
    """

    backend: str = "auto"
    weights: str | Path | None = None
    input_size: int = 128
    device: str = "cpu"
    num_threads: int | None = None
    cache_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"EncoderConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if int(self.input_size) < 32 or int(self.input_size) % 16:
            raise ValueError(f"EncoderConfig.input_size must be a multiple of 16 >= 32, got {self.input_size}")
        self.input_size = int(self.input_size)
