"""Optional larger pretrained trunk: any timm model with ``features_only`` support.

Set ``ModelConfig(backbone="<timm model name>", backbone_weights="<local .pth/.safetensors>")``
to replace our small CNN trunk by a pretrained one (e.g. ``"mobilenetv3_large_100"``,
``"resnet18"``, ``"convnext_atto"``, or a ViT such as ``"vit_small_patch14_dinov2"``) and
fine-tune it with ``bronchopt train --backbone NAME --backbone-weights FILE``. Nothing is
downloaded: the weights file must be local. timm (and the torchvision it imports) is optional;
importing this module raises ``ImportError`` with the reason when it cannot be used.

Hierarchical trunks give several feature levels (strides 2..32) that the U-Net decoder fuses;
plain ViTs give one level (stride = patch size), which the decoder upsamples.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["TimmTrunk", "timm_available"]

log = logging.getLogger("bronchopt.encoder")


def timm_available() -> tuple[bool, str]:
    """Whether timm imports here (it imports torchvision, which can be broken beside a CPU torch)."""
    try:
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or RuntimeError from a broken torchvision
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"backbone weights not found: {path} (nothing is downloaded; give a local file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


class TimmTrunk(nn.Module):
    """A timm backbone as the RGB trunk: our 6-channel input -> 3 channels (1x1 conv) -> features."""

    def __init__(self, name: str, weights: str | Path | None, in_chans: int):
        super().__init__()
        ok, why = timm_available()
        if not ok:
            raise ImportError(f"the timm backbone '{name}' needs timm (and torchvision): {why}")
        import timm

        kwargs = {"pretrained": False, "features_only": True}
        try:
            self.model = timm.create_model(name, dynamic_img_size=True, **kwargs)
        except TypeError:  # CNNs do not take dynamic_img_size
            self.model = timm.create_model(name, **kwargs)
        if weights:
            state = _load_state(weights)
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            log.info("backbone %s: loaded %s (%d missing, %d unexpected keys)", name, weights,
                     len(missing), len(unexpected))
        self.adapter = nn.Conv2d(in_chans, 3, 1)
        chans = list(self.model.feature_info.channels())
        strides = list(self.model.feature_info.reduction())
        # Keep a strictly increasing stride sequence (ViTs report one stride for every block).
        keep = [i for i in range(len(strides)) if i == len(strides) - 1 or strides[i] < strides[i + 1]]
        if len(set(strides)) == 1:
            keep = [len(strides) - 1]
        self.keep = keep
        self.out_channels = [chans[i] for i in keep]
        self.strides = [strides[i] for i in keep]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(self.adapter(x))
        return [feats[i] for i in self.keep]
