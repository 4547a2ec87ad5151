"""Photometric augmentation of endoscope frames (numpy / OpenCV, runs in the data worker).

On top of the simulator's own appearance randomisation, every training frame goes through a
random subset of: colour jitter (per-channel gain, saturation), exposure, gamma, contrast, white
specular blobs, vignetting, an uneven illumination field, a fluid film on the lens, blur, sensor
noise (Gaussian + shot) and JPEG-like quantisation. None of them moves a pixel: the depth target
stays aligned.

The illumination field (a smooth brightness ramp of random direction times an off-centre radial
falloff; off by default, ``bronchopt train --illumination P``) stands for what the simulator's light
does not vary enough: light guides off the lens axis, uneven LED output (the encoder reads a
global brightness difference as a tilted wall: the test appearance's light, 0.8-1.5 mm off the
lens, turns its depth by ~5 deg). Its range is generic, not fitted to that domain. Tried in
sessions 16-17, with the depth-ranking loss and alone: not shipped (encoder/MODEL_CARD.md).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

__all__ = ["AugmentConfig", "augment_rgb"]


@dataclass
class AugmentConfig:
    """Probabilities and ranges of each augmentation (``strength`` scales all ranges)."""

    strength: float = 1.0
    p_colour: float = 0.8
    p_gamma: float = 0.7
    p_specular: float = 0.5
    p_vignette: float = 0.5
    p_illumination: float = 0.0  # off in the shipped recipe (session 16's trial: see MODEL_CARD.md)
    p_film: float = 0.0  # a fluid film on the lens (the simulator's, sim.endoscope.fluid_film) over 10-40 % of the view
    illumination_ramp: float = 0.6  # max log-brightness change from the centre to an edge
    p_blur: float = 0.4
    p_noise: float = 0.7
    p_jpeg: float = 0.2
    p_gray: float = 0.05


def _specular(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Add a few small saturated highlights (where the wall faces the light)."""
    H, W = img.shape[:2]
    lum = img.mean(-1)
    n = int(rng.integers(1, 6))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = img.copy()
    # Highlights sit preferably on bright (near, facing) wall: sample centres by brightness.
    p = (lum.reshape(-1) + 1e-3) ** 2
    centres = rng.choice(H * W, size=n, p=p / p.sum())
    for c in centres:
        cy, cx = divmod(int(c), W)
        sx, sy = rng.uniform(0.5, 3.0, 2) * H / 128.0 * strength
        ang = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        blob = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) * rng.uniform(0.5, 1.0)
        out = out + blob[..., None] * (1.0 - out)
    return out


def _illumination(img: np.ndarray, rng: np.random.Generator, ramp: float) -> np.ndarray:
    """Multiply by exp(a . (x, y) - b r'^2): a ramp of random direction and size (log-brightness up
    to ``ramp`` from the centre to an edge) and a weak radial falloff about a random centre."""
    H, W = img.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    x, y = (xx - (W - 1) / 2) / (W / 2), (yy - (H - 1) / 2) / (H / 2)
    ang = rng.uniform(0, 2 * np.pi)
    a = rng.uniform(0.0, ramp)
    cx, cy = rng.uniform(-0.5, 0.5, 2)
    b = rng.uniform(0.0, 0.3)
    field = np.exp(a * (np.cos(ang) * x + np.sin(ang) * y) - b * ((x - cx) ** 2 + (y - cy) ** 2))
    return img * field[..., None].astype(np.float32)


def augment_rgb(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None) -> np.ndarray:
    """Randomly augment an RGB frame (H, W, 3) uint8 -> uint8 of the same shape."""
    import cv2

    cfg = cfg or AugmentConfig()
    s = cfg.strength
    img = rgb.astype(np.float32) / 255.0
    H, W = img.shape[:2]
    if rng.random() < cfg.p_colour:
        gains = np.exp(rng.normal(0.0, 0.2 * s, 3)).astype(np.float32)
        img = img * gains * np.exp(rng.normal(0.0, 0.4 * s))
        sat = np.clip(1.0 + rng.normal(0.0, 0.3 * s), 0.2, 2.0)
        g = img.mean(-1, keepdims=True)
        img = g + (img - g) * sat
        c = np.clip(1.0 + rng.normal(0.0, 0.2 * s), 0.5, 1.6)
        img = (img - img.mean()) * c + img.mean()
    img = np.clip(img, 0.0, 1.0)
    if rng.random() < cfg.p_gamma:
        img = img ** np.exp(rng.normal(0.0, 0.3 * s))
    if rng.random() < cfg.p_gray:
        img = np.repeat(img.mean(-1, keepdims=True), 3, axis=-1)
    if rng.random() < cfg.p_specular:
        img = _specular(img, rng, s)
    if rng.random() < cfg.p_vignette:
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        r2 = ((xx - W / 2 + rng.normal(0, 0.05 * W)) ** 2 + (yy - H / 2 + rng.normal(0, 0.05 * H)) ** 2) / (0.5 * max(H, W)) ** 2
        img = img * (1.0 - rng.uniform(0.1, 0.6) * s * np.clip(r2, 0, 2.0) / 2.0)[..., None]
    if rng.random() < cfg.p_illumination:
        img = np.clip(_illumination(img, rng, cfg.illumination_ramp * s), 0.0, 1.0)
    if rng.random() < cfg.p_film:
        from ..sim.endoscope import fluid_film

        hue = rng.uniform(20.0, 70.0)  # (yellowish to greenish mucus; the simulator draws 35-55)
        tint = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.1, 0.6), rng.uniform(0.6, 0.95))
        img = np.clip(fluid_film(img, rng.uniform(0.1, 0.4), tint, int(rng.integers(0, 2**31 - 1)), W / 200.0),
                      0.0, 1.0).astype(np.float32)
    if rng.random() < cfg.p_blur:
        sigma = rng.uniform(0.3, 1.5) * s * H / 128.0
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if rng.random() < cfg.p_noise:
        shot = rng.uniform(0.0, 0.03) * s
        read = rng.uniform(0.0, 0.03) * s
        img = img + rng.normal(0.0, 1.0, img.shape).astype(np.float32) * np.sqrt(shot * np.clip(img, 0, 1) + read ** 2)
    img = np.clip(img, 0.0, 1.0)
    out = (img * 255.0 + 0.5).astype(np.uint8)
    if rng.random() < cfg.p_jpeg:
        q = int(rng.integers(30, 90))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return out
