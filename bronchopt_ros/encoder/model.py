"""The encoder network: an RGB U-Net, a light depth branch and a shared embedding head.

Three modules, so that each runs only where it is needed:

* :class:`RGBNet` (once per frame): a U-Net over the RGB frame giving, at the input
  resolution, a scale-normalised log-depth, its uncertainty (log sigma), a "surface hit" logit and
  (optionally) normals; and, at ``1/feature_stride`` of it, dense L2-normalised features.
  The trunk is our small CNN or a timm backbone (:mod:`.timm_trunk`).
* :class:`DepthNet` (per optimiser iteration): three cheap convolutions over a normalised
  log-depth map at the feature grid giving features of the same kind as the RGB ones.
* :class:`EmbedNet` (once per frame / per indexed view): a global L2-normalised embedding of a
  (normalised log-depth, validity, dense features) stack. It is shared by both modalities: the
  RGB side feeds it its *predicted* depth and its features, the depth side the rendered depth and
  its features, so the embedding inherits the dense alignment.

Pre-processing lives outside the networks (:func:`rgb_input`, :func:`depth_input`) so that the
exported ONNX / TensorRT graphs hold only convolutions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

__all__ = ["EncoderNet", "RGBNet", "RGBGraph", "DepthNet", "EmbedNet", "rgb_input", "depth_input", "rgb_outputs",
           "embed_input", "similarity",
           "normalise_log_depth", "masked_median", "masked_resize", "RGB_IN_CHANNELS"]

RGB_IN_CHANNELS = 6
_LOG_EPS = 1e-6  # metres: floor of a valid depth before the log


# ---------------------------------------------------------------------------------- pre-processing
def rgb_input(rgb: torch.Tensor) -> torch.Tensor:
    """Gain-invariant input stack from RGB in [0, 1] (B, 3, H, W) -> (B, 6, H, W).

    Channels: the image divided by its mean brightness (so a global exposure change does not
    matter) and its log-intensity minus the per-channel mean log (under the light-at-the-camera
    falloff, log intensity is close to linear in log depth).
    """
    x = rgb.clamp(0.0, 1.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    lin = x / mean - 1.0
    lg = torch.log(x + 0.02)
    lg = lg - lg.mean(dim=(2, 3), keepdim=True)
    return torch.cat([lin, lg], dim=1)


def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Median of ``x`` (B, ...) over ``mask`` per batch item -> (B,); 0 where the mask is empty."""
    b = x.shape[0]
    xf = torch.where(mask.reshape(b, -1), x.reshape(b, -1), torch.full_like(x.reshape(b, -1), float("nan")))
    med = torch.nanmedian(xf, dim=1).values
    return torch.nan_to_num(med, nan=0.0)


def normalise_log_depth(log_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Subtract the per-image median over ``mask`` (B, 1, H, W) and zero the masked-out pixels."""
    med = masked_median(log_depth, mask)
    return torch.where(mask, log_depth - med.view(-1, 1, 1, 1), torch.zeros_like(log_depth))


def masked_resize(depth: torch.Tensor, valid: torch.Tensor, size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a depth map (B, 1, H, W) to ``size`` averaging valid pixels only (differentiable).

    Returns (depth, valid) at ``size``; a target pixel is valid where more than half of what it
    covers is valid.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(depth.shape[-2:]) == size:
        return depth, valid
    v = valid.to(depth.dtype)
    if depth.shape[-2] % size[0] == 0 and depth.shape[-1] % size[1] == 0:
        k = (depth.shape[-2] // size[0], depth.shape[-1] // size[1])
        num = F.avg_pool2d(depth * v, k)
        den = F.avg_pool2d(v, k)
    else:
        num = F.interpolate(depth * v, size=size, mode="bilinear", align_corners=False, antialias=True)
        den = F.interpolate(v, size=size, mode="bilinear", align_corners=False, antialias=True)
    out_valid = den > 0.5
    return torch.where(out_valid, num / den.clamp_min(1e-6), torch.zeros_like(num)), out_valid


def depth_input(depth: torch.Tensor, valid: torch.Tensor | None, grid: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth (B, 1, H, W) metres (0 = no hit) -> ((B, 2, g, g) [normalised log-depth, valid], valid).

    The log-depth is zero-median over the valid pixels, so the branch sees relative depth only
    (an RGB frame carries no absolute scale). Differentiable with respect to ``depth``.
    """
    if valid is None:
        valid = depth > 0
    valid = valid & (depth > _LOG_EPS)
    d, v = masked_resize(depth, valid, grid)
    ld = torch.log(d.clamp_min(_LOG_EPS))
    nld = normalise_log_depth(ld, v)
    return torch.cat([nld, v.to(nld.dtype)], dim=1), v


# ---------------------------------------------------------------------------------- blocks
def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Sequential):
    """Two 3x3 conv-BN-ReLU, the first with the stage's stride."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int = 1):
        super().__init__(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, dilation))


class UNetTrunk(nn.Module):
    """Our small CNN encoder: stage i runs at stride 2**i (i = 0 at the input resolution)."""

    def __init__(self, cin: int, channels: tuple[int, ...], stem_stride: int = 2):
        super().__init__()
        stages, c = [], cin
        for i, ch in enumerate(channels):
            # The deepest stage adds a dilated conv for a wider receptive field (whole-lumen context).
            stages.append(_Stage(c, ch, stem_stride if i == 0 else 2, dilation=2 if i == len(channels) - 1 else 1))
            c = ch
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(channels)
        self.strides = [stem_stride * 2 ** i for i in range(len(channels))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """Upsample from the deepest level to stride 1, fusing the skip at each level.

    Returns the decoded maps at every stride of the trunk (and stride 1 added if the trunk has no
    stride-1 level), finest last.
    """

    def __init__(self, in_channels: list[int], strides: list[int], out_channels: list[int]):
        super().__init__()
        assert len(in_channels) == len(strides) == len(out_channels)
        self.strides = list(strides)
        self.blocks = nn.ModuleList()
        c = in_channels[-1]
        for i in range(len(in_channels) - 2, -1, -1):
            self.blocks.append(nn.Sequential(conv_bn(c + in_channels[i], out_channels[i], 3),
                                             conv_bn(out_channels[i], out_channels[i], 3)))
            c = out_channels[i]
        self.extra = None
        if strides[0] > 1:  # the trunk starts at stride 2 (or 4): refine to stride 1 with the image
            self.extra = conv_bn(c + RGB_IN_CHANNELS, 16, 3)
            c = 16
        self.out_channels = c

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> dict[int, torch.Tensor]:
        x = feats[-1]
        out = {self.strides[-1]: x}
        for j, i in enumerate(range(len(feats) - 2, -1, -1)):
            x = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.blocks[j](torch.cat([x, feats[i]], dim=1))
            out[self.strides[i]] = x
        if self.extra is not None:
            x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
            x = self.extra(torch.cat([x, image], dim=1))
            out[1] = x
        return out


class RGBNet(nn.Module):
    """RGB frame (B, 6, S, S) from :func:`rgb_input` -> dense maps (see :meth:`forward`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "unet":
            self.trunk = UNetTrunk(RGB_IN_CHANNELS, cfg.channels, cfg.stem_stride)
        else:
            from .timm_trunk import TimmTrunk

            self.trunk = TimmTrunk(cfg.backbone, cfg.backbone_weights, RGB_IN_CHANNELS)
        chans, strides = self.trunk.out_channels, self.trunk.strides
        dec_out = [max(c, 16) for c in cfg.channels[: len(chans)]] if cfg.backbone == "unet" else \
            [min(max(c // 2, 16), 64) for c in chans]
        self.decoder = UNetDecoder(chans, strides, dec_out)
        c1 = self.decoder.out_channels
        self.n_dense = 3 + (3 if cfg.normals_head else 0)
        self.dense_head = nn.Sequential(nn.Conv2d(c1, self.n_dense, 3, padding=1))
        fs = cfg.feature_stride
        cf = dec_out[strides.index(fs)] if fs in strides else c1
        self.feat_stride_in_decoder = fs in strides
        self.feature_head = nn.Sequential(conv_bn(cf + 1, 32, 3), nn.Conv2d(32, cfg.feature_dim, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (dense (B, 3[+3], S, S): raw log-depth, log sigma, hit logit[, normals];
        features (B, C, S/fs, S/fs), L2-normalised)."""
        feats = self.trunk(x)
        dec = self.decoder(feats, x)
        dense = self.dense_head(dec[1])
        fs = self.cfg.feature_stride
        g = (x.shape[-2] // fs, x.shape[-1] // fs)
        base = dec[fs] if self.feat_stride_in_decoder else F.interpolate(dec[1], size=g, mode="bilinear", align_corners=False)
        ld = F.avg_pool2d(dense[:, 0:1], fs) if fs > 1 else dense[:, 0:1]
        ld = ld - ld.mean(dim=(2, 3), keepdim=True)
        f = self.feature_head(torch.cat([base, ld], dim=1))
        return dense, F.normalize(f, dim=1)


class DepthNet(nn.Module):
    """The light depth branch: (B, 2, g, g) from :func:`depth_input` -> (B, C, g, g) L2-normalised."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c1, c2 = cfg.depth_channels
        self.c1 = conv_bn(2, c1, 3)
        self.c2 = conv_bn(c1, c2, 3, 2)
        self.c3 = conv_bn(c2, c2, 3)
        self.out = nn.Conv2d(c1 + c2 + 1, cfg.feature_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        b = self.c3(self.c2(a))
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return F.normalize(self.out(torch.cat([a, b, x[:, :1]], dim=1)), dim=1)


class EmbedNet(nn.Module):
    """(B, 2 + C, g, g) [normalised log-depth, validity, dense features] -> (B, D) L2-normalised."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = 2 + cfg.feature_dim
        self.body = nn.Sequential(conv_bn(c, 32, 3, 2), conv_bn(32, 48, 3, 2), conv_bn(48, 64, 3, 2),
                                  conv_bn(64, 96, 3, 2))
        self.fc = nn.Sequential(nn.Linear(192, 128), nn.ReLU(inplace=True), nn.Linear(128, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.fc(h), dim=1)


def embed_input(log_depth: torch.Tensor, weight: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """The embedding net's input at the feature grid: log-depth minus its ``weight``-ed mean (zeroed
    where ``weight`` <= 0.5), ``weight`` (hit probability or validity) and the dense features."""
    mean = (log_depth * weight).sum(dim=(2, 3), keepdim=True) / weight.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    ld = (log_depth - mean) * (weight > 0.5).to(log_depth.dtype)
    return torch.cat([ld, weight, feats], dim=1)


class RGBGraph(nn.Module):
    """Everything that runs on an RGB frame, as one graph (what the ONNX / TensorRT backends export).

    ``rgb01`` (B, 3, S, S) in [0, 1] -> (dense (B, 3[+3], S, S) [raw log-depth, log sigma, hit
    logit, normals], features (B, C, S/fs, S/fs), embedding (B, D)).
    """

    def __init__(self, rgb: RGBNet, embed: EmbedNet, feature_stride: int):
        super().__init__()
        self.rgb, self.embed, self.fs = rgb, embed, int(feature_stride)

    def forward(self, rgb01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dense, feats = self.rgb(rgb_input(rgb01))
        return dense, feats, self.embed_from(dense[:, 0:1], torch.sigmoid(dense[:, 2:3]), feats)

    def embed_from(self, log_depth: torch.Tensor, hit_prob: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The embedding from the dense outputs (log-depth with any offset, hit probability, both
        (B, 1, S, S)) and the features: what :meth:`forward` ends with, apart for a caller that
        wants it only sometimes (relocalisation)."""
        if self.fs > 1:
            log_depth, hit_prob = F.avg_pool2d(log_depth, self.fs), F.avg_pool2d(hit_prob, self.fs)
        return self.embed(embed_input(log_depth, hit_prob, feats))


def rgb_outputs(dense: torch.Tensor, feats: torch.Tensor, embedding: torch.Tensor | None = None,
                normals: bool = True) -> dict[str, torch.Tensor]:
    """Split the RGB graph's raw outputs: log_depth (zero-median over the pixels predicted to hit
    a surface), log_sigma, hit_prob, [normals,] features[, embedding]. All (B, ...). ``normals``
    False leaves the normals (a training target, unused at run time) out."""
    hit_prob = torch.sigmoid(dense[:, 2:3])
    valid = hit_prob > 0.5
    valid = valid | (~valid.flatten(1).any(1)).view(-1, 1, 1, 1)  # never an empty mask
    raw = dense[:, 0:1]
    out = {"log_depth": raw - masked_median(raw, valid).view(-1, 1, 1, 1),
           "log_sigma": dense[:, 1:2].clamp(-7.0, 3.0), "hit_prob": hit_prob, "features": feats}
    if normals and dense.shape[1] >= 6:
        out["normals"] = F.normalize(dense[:, 3:6], dim=1)
    if embedding is not None:
        out["embedding"] = embedding
    return out


class EncoderNet(nn.Module):
    """The three networks together, with the glue that training and the runtime share."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        self.rgb = RGBNet(self.cfg)
        self.depth = DepthNet(self.cfg)
        self.embed = EmbedNet(self.cfg)

    def rgb_graph(self) -> RGBGraph:
        return RGBGraph(self.rgb, self.embed, self.cfg.feature_stride)

    def forward_rgb(self, rgb01: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB in [0, 1] (B, 3, S, S) -> dict (see :func:`rgb_outputs`)."""
        return rgb_outputs(*self.rgb_graph()(rgb01))

    def grid(self, input_size: int) -> int:
        """Side of the dense feature grid for a square input of ``input_size``."""
        return input_size // self.cfg.feature_stride

    def forward_depth(self, depth: torch.Tensor, valid: torch.Tensor | None, grid: int | tuple[int, int]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Depth (B, 1, H, W) metres -> (features (B, C, g, g) zeroed where invalid, valid (B, 1, g, g),
        input stack (B, 2, g, g)). Differentiable with respect to ``depth``."""
        x, v = depth_input(depth, valid, grid)
        return self.depth(x) * v.to(x.dtype), v, x

    def embed_depth(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Embedding of a depth map from its input stack ``x`` and features (see :meth:`forward_depth`)."""
        return self.embed(embed_input(x[:, :1], x[:, 1:2], feats))


def similarity(f_a: torch.Tensor, f_b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine of two L2-normalised feature maps (..., C, h, w) over ``mask`` (..., h, w) -> (...)."""
    cos = (f_a * f_b).sum(dim=-3)
    if mask is None:
        return cos.mean(dim=(-2, -1))
    m = mask.to(cos.dtype)
    while m.dim() > cos.dim():
        m = m.squeeze(-3)
    return (cos * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp_min(1.0)
