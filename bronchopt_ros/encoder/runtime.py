"""The encoder as the tracker uses it: :class:`Encoder` and :func:`load_encoder`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Camera
from .backends import file_hash, make_backend
from .config import EncoderConfig, ModelConfig
from .model import EncoderNet, masked_resize, rgb_outputs, similarity

__all__ = ["Encoder", "RGBEncoding", "load_encoder", "shipped_weights", "save_checkpoint", "load_net",
           "CONFIDENCE_SIGMA"]

log = logging.getLogger("bronchopt.encoder")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = "encoder.pt"
#: Predicted log-depth error (Laplace scale) at which the confidence's error term is one half.
CONFIDENCE_SIGMA = 0.1


def shipped_weights() -> Path:
    """Path of the weights that ship with the package (may not exist in a bare checkout)."""
    return WEIGHTS_DIR / SHIPPED


@dataclass
class RGBEncoding:
    """What :meth:`Encoder.encode_rgb` gives for one frame (torch tensors on the encoder's device).

    * ``log_depth`` (S, S): predicted log-depth, zero median over the pixels predicted to see the
      wall (scale-normalised: the frame carries no absolute scale).
    * ``confidence`` (S, S) in [0, 1]: ``hit_prob / (1 + (sigma / CONFIDENCE_SIGMA)^2)`` with
      ``sigma = exp(log_sigma)`` the predicted mean absolute log-depth error.
    * ``features`` (C, g, g): dense L2-normalised features on the feature grid (g = S / stride).
    * ``embedding`` (D,): global L2-normalised embedding (relocalisation); None when encoded with
      ``embedding=False`` (:meth:`Encoder.embed_rgb` makes it then).
    * ``hit_prob`` (S, S): probability that the pixel's ray hits the wall (not a far opening).
    * ``log_sigma`` (S, S): log of the predicted log-depth error.
    """

    log_depth: torch.Tensor
    confidence: torch.Tensor
    features: torch.Tensor
    embedding: torch.Tensor | None
    hit_prob: torch.Tensor
    log_sigma: torch.Tensor


def load_net(path: str | Path, map_location="cpu") -> tuple[EncoderNet, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (or a training checkpoint)."""
    ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    net = EncoderNet(ModelConfig.from_dict(ckpt["model_config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    net.load_state_dict(state)
    return net.eval(), dict(ckpt.get("meta", {}))


def save_checkpoint(net: EncoderNet, path: str | Path, meta: dict | None = None, half: bool = True) -> Path:
    """Write the inference weights (fp16 by default) with the architecture and ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
             for k, v in net.state_dict().items()}
    torch.save({"model_config": net.cfg.to_dict(), "state_dict": state, "meta": dict(meta or {})}, str(path))
    return path


class Encoder:
    """Dense features, scale-normalised depth and global embeddings of RGB frames and depth maps.

    Build it with :func:`load_encoder`. RGB frames are resized to ``input_size`` x ``input_size``;
    the dense outputs live on that grid (``log_depth``, ``confidence``) and on the feature grid
    ``g = input_size / feature_stride`` (``features``). Use :meth:`input_camera` /
    :meth:`grid_camera` for the matching pinhole cameras.
    """

    def __init__(self, net: EncoderNet, cfg: EncoderConfig, weights: Path | None = None, meta: dict | None = None):
        self.cfg = cfg
        self.net = net.eval()
        self.device = torch.device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        self.net.to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.meta = dict(meta or {})
        self.weights = weights
        self.input_size = cfg.input_size
        self.grid = net.grid(cfg.input_size)
        self.feature_dim = net.cfg.feature_dim
        self.embed_dim = net.cfg.embed_dim
        sha = file_hash(weights) if weights is not None and Path(weights).exists() else None
        self._backend, self.backend_reason = make_backend(net.rgb_graph(), cfg.backend, self.device, cfg.input_size,
                                                          weights, sha, cfg.cache_dir, cfg.num_threads)
        self.backend_name = self._backend.name
        log.info("encoder backend: %s (%s)", self.backend_name, self.backend_reason)

    # ------------------------------------------------------------------ cameras
    def input_camera(self, camera: Camera) -> Camera:
        """The camera of the resized RGB frame (the grid of ``log_depth`` / ``confidence``)."""
        return camera.scaled(self.input_size, self.input_size)

    def grid_camera(self, camera: Camera) -> Camera:
        """The camera of the dense feature grid."""
        return camera.scaled(self.grid, self.grid)

    # ------------------------------------------------------------------ RGB side
    def _rgb_tensor(self, rgb) -> torch.Tensor:
        """Any RGB image (H, W, 3) uint8 / float, or (3, H, W) float in [0, 1] -> (1, 3, S, S) float."""
        S = self.input_size
        if isinstance(rgb, np.ndarray):
            if rgb.ndim != 3 or rgb.shape[-1] != 3:
                raise ValueError(f"encode_rgb: expected an (H, W, 3) image, got {rgb.shape}")
            img = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
            if img.shape[:2] != (S, S):
                import cv2

                shrink = img.shape[0] > S and img.shape[1] > S
                img = cv2.resize(img, (S, S), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        x = torch.as_tensor(rgb)
        if x.dim() != 3:
            raise ValueError(f"encode_rgb: expected one image, got shape {tuple(x.shape)}")
        if x.shape[0] != 3 and x.shape[-1] == 3:
            x = x.permute(2, 0, 1)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = x[None]
        if tuple(x.shape[-2:]) != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        return x

    def encode_rgb(self, rgb, embedding: bool = True) -> RGBEncoding:
        """Encode one RGB frame (numpy (H, W, 3) uint8, or a tensor (H, W, 3) / (3, H, W)).
        ``embedding=False``: the eager backend skips the global embedding (None; see
        :meth:`embed_rgb`); the compiled backends make it anyway."""
        x = self._rgb_tensor(rgb)
        with torch.no_grad():
            if embedding or not hasattr(self._backend, "embed"):
                dense, feats, emb = self._backend(x)
            else:
                dense, feats, emb = self._backend(x, embedding=False)
            out = rgb_outputs(dense.to(self.device), feats.to(self.device), None if emb is None else emb.to(self.device),
                              normals=False)  # (a training target, unused at run time: 2.6-3 ms a frame here)
        sigma = torch.exp(out["log_sigma"])
        conf = out["hit_prob"] / (1.0 + (sigma / CONFIDENCE_SIGMA) ** 2)
        return RGBEncoding(out["log_depth"][0, 0], conf[0, 0], out["features"][0],
                           out["embedding"][0] if "embedding" in out else None,
                           out["hit_prob"][0, 0], out["log_sigma"][0, 0])

    def embed_rgb(self, enc: RGBEncoding) -> torch.Tensor:
        """The global embedding (D,) of a frame's encoding (its own, or made now from its outputs
        when it was encoded with ``embedding=False``)."""
        if enc.embedding is not None:
            return enc.embedding
        # (only the eager backend leaves it out, and it can make it)
        return self._backend.embed(enc.log_depth[None, None], enc.hit_prob[None, None], enc.features[None])[0]

    # ------------------------------------------------------------------ depth side
    def _depth_tensor(self, depth, valid) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        d = depth if isinstance(depth, torch.Tensor) else torch.as_tensor(np.asarray(depth))
        single = d.dim() == 2
        if d.dim() not in (2, 3):
            raise ValueError(f"depth must be (H, W) or (B, H, W), got {tuple(d.shape)}")
        d = d.to(self.device, torch.float32)[:, None] if not single else d.to(self.device, torch.float32)[None, None]
        v = None
        if valid is not None:
            v = valid if isinstance(valid, torch.Tensor) else torch.as_tensor(np.asarray(valid))
            v = v.to(self.device).bool()
            v = v[None, None] if single else v[:, None]
        return d, v, single

    def encode_depth(self, depth, valid=None) -> torch.Tensor:
        """Dense features of a depth map (H, W) or (B, H, W), metres, 0 = no hit.

        Returns (C, g, g) (or (B, C, g, g)), zero at grid cells without a valid depth.
        Differentiable with respect to ``depth`` (the per-iteration cost of the paper's optimiser).
        """
        d, v, single = self._depth_tensor(depth, valid)
        f, _, _ = self.net.forward_depth(d, v, self.grid)
        return f[0] if single else f

    def depth_mask(self, depth, valid=None) -> torch.Tensor:
        """Which feature-grid cells of a depth map are valid: (g, g) or (B, g, g) bool."""
        d, v, single = self._depth_tensor(depth, valid)
        v = (d > 0) if v is None else v & (d > 0)
        _, m = masked_resize(d.detach(), v, self.grid)
        return m[0, 0] if single else m[:, 0]

    def embed_depth(self, depth, valid=None) -> torch.Tensor:
        """Global embedding (D,) (or (B, D)) of a depth map, comparable with ``encode_rgb(...).embedding``."""
        d, v, single = self._depth_tensor(depth, valid)
        f, _, x = self.net.forward_depth(d, v, self.grid)
        e = self.net.embed_depth(x, f)
        return e[0] if single else e

    # ------------------------------------------------------------------ comparison
    @staticmethod
    def similarity(features_rgb: torch.Tensor, features_depth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cosine of two feature maps (C, g, g) (or batched (..., C, g, g)) over ``mask``
        (default: the cells where the depth features are defined), in [-1, 1]. Differentiable."""
        if mask is None:
            mask = features_depth.detach().abs().sum(dim=-3) > 0
        return similarity(features_rgb, features_depth, mask)

    def __repr__(self) -> str:  # pragma: no cover - cosmetics
        return (f"Encoder(backend={self.backend_name}, input_size={self.input_size}, grid={self.grid}, "
                f"C={self.feature_dim}, D={self.embed_dim}, device={self.device})")


def load_encoder(cfg: EncoderConfig | None = None, **overrides) -> Encoder:
    """Load an :class:`Encoder` (the shipped weights unless ``cfg.weights`` names a file).

    ``overrides`` are :class:`EncoderConfig` fields, e.g. ``load_encoder(backend="torch")``.
    Raises ``FileNotFoundError`` if the weights file does not exist.
    """
    cfg = cfg or EncoderConfig()
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    path = Path(cfg.weights) if cfg.weights is not None else shipped_weights()
    if not path.exists():
        raise FileNotFoundError(f"encoder weights not found: {path}" +
                                (" (the shipped weights are missing: train them with `bronchopt train`)"
                                 if cfg.weights is None else ""))
    net, meta = load_net(path)
    return Encoder(net, cfg, path, meta)
