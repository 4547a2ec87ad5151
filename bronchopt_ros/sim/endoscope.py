"""The endoscope image model: from per-pixel geometry to a camera image.

:func:`shade` turns the visible surface (CT-space point for the solid textures, camera-frame
normal, depth, cartilage-ring coordinate) into linear radiance:

* a point light at the tip (``light_offset`` beside the lens, towards ``light_angle``) with
  ``1 / d**falloff`` falloff (inverse square by default) and the cosine term, plus a little
  ambient light;
* wet specular highlights (Blinn-Phong) with a patchy wet film;
* mucosa albedo = base colour x low-frequency colour patches x solid texture (3D noise at the
  CT-space hit point, ``fbm`` or ``ridged``, baked into small periodic volumes and looked up
  trilinearly) with blood vessels (thin lines along noise zero-crossings) and cartilage rings (from the arc length along the nearest centerline
  branch, paler and with shading relief, fading out with the generation).

:func:`develop` is the camera: vignetting, white balance, motion blur, optical blur, auto-gain
(the ``autogain_percentile`` of the lit pixels maps to ``autogain_target``), lens artefacts
(bubbles, fluid film), sensor noise (shot + read) and gamma, to uint8 RGB.

All of it is vectorised numpy over the pixels (a 200x200 frame takes a few ms).
"""
from __future__ import annotations

import numpy as np

from .appearance import Appearance

__all__ = ["gradient_noise", "fbm", "noise_volume", "shade", "develop", "fluid_film", "ShadingInputs", "AutoGain"]

D_REF = 0.01  # irradiance is normalised to 1 at 10 mm


# =========================================================================== solid noise
_GRADS = np.array([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1],
                   [1, 0, -1], [-1, 0, -1], [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1],
                   [1, 1, 0], [-1, 1, 0], [0, -1, 1], [0, -1, -1]], dtype=np.float32)


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    h = (ix.astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (iy.astype(np.uint32) * np.uint32(0xD8163841)) \
        ^ (iz.astype(np.uint32) * np.uint32(0xCB1AB31F)) ^ np.uint32(seed * 0x9E3779B1 & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    return h


def gradient_noise(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Perlin-style gradient noise at points (N, 3) (lattice spacing 1), values about [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    i0 = np.floor(x)
    f = (x - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    w = f * f * f * (f * (f * 6 - 15) + 10)  # quintic fade
    out = np.zeros(len(x), dtype=np.float32)
    with np.errstate(over="ignore"):
        for dx in (0, 1):
            wx = w[:, 0] if dx else 1 - w[:, 0]
            for dy in (0, 1):
                wy = w[:, 1] if dy else 1 - w[:, 1]
                for dz in (0, 1):
                    wz = w[:, 2] if dz else 1 - w[:, 2]
                    g = _GRADS[_hash(i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz, seed) & np.uint32(15)]
                    d = (f[:, 0] - dx) * g[:, 0] + (f[:, 1] - dy) * g[:, 1] + (f[:, 2] - dz) * g[:, 2]
                    out += wx * wy * wz * d
    return out


def fbm(x: np.ndarray, scale: float, octaves: int, seed: int, family: str = "fbm") -> np.ndarray:
    """Fractal noise of points (N, 3) metres with features of size ``scale`` metres and below.

    ``fbm``: sum of octaves (about zero mean, [-1, 1]); ``ridged``: sharp-crested cellular
    look, shifted to zero mean. Octave ``o`` has frequency ``2**o / (scale * 2**(octaves-1))``.
    """
    x = np.asarray(x, dtype=np.float64)
    base = 1.0 / (scale * 2 ** (octaves - 1))
    total, norm = np.zeros(len(x), dtype=np.float32), 0.0
    for o in range(octaves):
        a = 0.5**o
        n = gradient_noise(x * (base * 2**o), seed + 101 * o)
        if family == "ridged":
            n = (1.0 - np.abs(n) * 1.6) ** 2 - 0.45
        total += a * n
        norm += a
    return total / norm * 1.6


# =========================================================================== shading
class ShadingInputs:
    """Per-hit geometry for :func:`shade` (flat arrays over the hit pixels, camera frame)."""

    def __init__(self, point_ct: np.ndarray, point_cam: np.ndarray, normal_cam: np.ndarray,
                 ring_s: np.ndarray | None = None, ring_weight: np.ndarray | None = None,
                 axis_cam: np.ndarray | None = None):
        self.point_ct = point_ct  # (N, 3) CT-space surface point (texture coordinates)
        self.point_cam = point_cam  # (N, 3) surface point in the camera frame (light, view)
        self.normal_cam = normal_cam  # (N, 3) unit normal towards the camera
        self.ring_s = ring_s  # (N,) arc length along the centerline (m)
        self.ring_weight = ring_weight  # (N,) 1 in the trachea, 0 where there are no rings
        self.axis_cam = axis_cam  # (N, 3) branch direction in the camera frame


# --------------------------------------------------------------------------- baked solid textures
# Evaluating gradient noise per pixel costs ~4 ms per octave at 200x200; instead every texture
# layer is baked once into a small periodic volume (FFT-filtered noise) and looked up with one
# trilinear gather per layer (~1 ms). Volumes depend only on (variant, kind): an appearance's
# seed picks one of VARIANTS and a random rotation/offset of the lookup.
VOL_N = 64
VARIANTS = 4


def _band_noise(rng: np.random.Generator, n: int, wavelength: float) -> np.ndarray:
    """Periodic Gaussian random field (n, n, n), band-limited around ``wavelength`` voxels,
    unit standard deviation."""
    w = rng.standard_normal((n, n, n)).astype(np.float32)
    F = np.fft.rfftn(w)
    f = [np.fft.fftfreq(n)] * 2 + [np.fft.rfftfreq(n)]
    fr = np.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)
    f0 = 1.0 / wavelength
    F *= np.exp(-0.5 * (np.log(np.maximum(fr, 1e-6) / f0) / 0.35) ** 2)
    out = np.fft.irfftn(F, s=(n, n, n), axes=(0, 1, 2)).astype(np.float32)
    return out / max(float(out.std()), 1e-12)


def _trilinear(vol: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Periodic trilinear lookup of ``vol`` (n, n, n, C) at voxel coordinates ``u`` (N, 3) -> (N, C)."""
    n, C = vol.shape[0], vol.shape[3]
    flat = vol.reshape(-1, C)
    fl = np.floor(u)
    f = (u - fl).astype(np.float32)
    i0 = fl.astype(np.int64)
    if n & (n - 1) == 0:
        i0 &= n - 1
        i1 = (i0 + 1) & (n - 1)
    else:
        i0 %= n
        i1 = (i0 + 1) % n
    x0, x1 = i0[:, 0] * (n * n), i1[:, 0] * (n * n)
    y0, y1 = i0[:, 1] * n, i1[:, 1] * n
    z0, z1 = i0[:, 2], i1[:, 2]
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    gx, gy, gz = 1 - fx, 1 - fy, 1 - fz

    def g(i: np.ndarray) -> np.ndarray:
        return np.take(flat, i, axis=0)

    c0 = (g(x0 + y0 + z0) * gz + g(x0 + y0 + z1) * fz) * gy + (g(x0 + y1 + z0) * gz + g(x0 + y1 + z1) * fz) * fy
    c1 = (g(x1 + y0 + z0) * gz + g(x1 + y0 + z1) * fz) * gy + (g(x1 + y1 + z0) * gz + g(x1 + y1 + z1) * fz) * fy
    return c0 * gx + c1 * fx


_VOLUMES: dict[tuple[int, str], np.ndarray] = {}


def noise_volume(variant: int, kind: str) -> np.ndarray:
    """A baked periodic texture volume (VOL_N^3, C), cached. Kinds:

    * ``fbm`` / ``ridged``: 4 channels, octaves of wavelength 32, 16, 8, 4 voxels (the ridged
      family applies ``(1 - 1.6|n|)^2`` per octave);
    * ``vessel``: 2 channels of domain-warped band noise, wavelength 12 voxels (vessels are drawn
      along their zero crossings);
    * ``low``: 3 channels, wavelengths 24, 40 and 8 voxels (colour patches, redness, wet film).
    """
    key = (int(variant) % VARIANTS, kind)
    vol = _VOLUMES.get(key)
    if vol is not None:
        return vol
    rng = np.random.default_rng([key[0], {"fbm": 1, "ridged": 2, "vessel": 3, "low": 4}[kind]])
    n = VOL_N
    if kind in ("fbm", "ridged"):
        chans = []
        for lam in (32.0, 16.0, 8.0, 4.0):
            c = _band_noise(rng, n, lam) * 0.4
            if kind == "ridged":
                c = (1.0 - np.abs(c) * 1.6) ** 2
                c = (c - c.mean()) / max(float(c.std()), 1e-6) * 0.4
            chans.append(c)
    elif kind == "vessel":
        warp = np.stack([_band_noise(rng, n, 24.0) for _ in range(3)], -1) * 2.5
        grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
        chans = []
        for _ in range(2):
            base = _band_noise(rng, n, 12.0)[..., None]
            chans.append(_trilinear(base, grid + warp.reshape(-1, 3))[:, 0].reshape(n, n, n) * 0.35)
    elif kind == "low":
        chans = [_band_noise(rng, n, lam) * 0.35 for lam in (24.0, 40.0, 8.0)]
    else:
        raise ValueError(f"unknown noise volume kind '{kind}'")
    vol = np.ascontiguousarray(np.stack(chans, -1).astype(np.float32))
    _VOLUMES[key] = vol
    return vol


def _lookup_frame(app: Appearance, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-appearance random rotation and offset of the texture lookups (decorrelates layers
    and appearances sharing a baked volume)."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng([int(app.seed) % (2**31), salt])
    return Rotation.random(random_state=rng).as_matrix(), rng.uniform(0, VOL_N, 3)


def _sample(app: Appearance, kind: str, x: np.ndarray, voxel: float, salt: int) -> np.ndarray:
    R, off = _lookup_frame(app, salt)
    u = (x @ R.T) * (1.0 / voxel) + off
    return _trilinear(noise_volume(int(app.seed), kind), u)


def _albedo(inp: ShadingInputs, app: Appearance) -> np.ndarray:
    x = inp.point_ct
    n = len(x)
    base = np.asarray(app.base_rgb, dtype=np.float32)[None, :].repeat(n, 0)
    if app.colour_variation > 0:
        low = _sample(app, "low", x, 0.0005, 1)  # 12 mm and 20 mm patches
        base = base * (1.0 + app.colour_variation * 1.5 * low[:, :1])
        base[:, 0] *= 1.0 + app.colour_variation * low[:, 1]  # redder / paler patches
    if app.texture_contrast > 0:
        # the finest octave (4 voxels) has the texture_scale
        oct = _sample(app, "ridged" if app.texture_family == "ridged" else "fbm", x, app.texture_scale / 4.0, 2)
        k = int(np.clip(app.texture_octaves, 1, 4))
        wts = np.array([0.5 ** (k - 1 - i) for i in range(k)], dtype=np.float32)  # coarse.. fine
        t = oct[:, 4 - k:] @ wts / wts.sum() * 2.5
        base = base * (1.0 + app.texture_contrast * t[:, None])
    if app.vessel_contrast > 0:
        v = _sample(app, "vessel", x, app.vessel_scale / 12.0, 3)
        v2 = _sample(app, "vessel", x * 2.3, app.vessel_scale / 12.0, 4)[:, 1]
        lines = np.exp(-(v[:, 0] / app.vessel_width) ** 2) + 0.6 * np.exp(-(v2 / (0.7 * app.vessel_width)) ** 2)
        lines = np.clip(lines, 0.0, 1.0) * app.vessel_contrast
        base = base * (1 - lines[:, None]) + np.asarray(app.vessel_rgb, dtype=np.float32) * lines[:, None]
    if app.ring_contrast > 0 and inp.ring_s is not None:
        r = _ring_profile(inp.ring_s, app) * inp.ring_weight
        pale = base * 0.6 + 0.4 * base.mean(1, keepdims=True) + 0.12
        k = (app.ring_contrast * r)[:, None]
        base = base * (1 - k) + pale * k
    return np.clip(base, 0.0, 1.0)


def _ring_profile(s: np.ndarray, app: Appearance) -> np.ndarray:
    """1 on a cartilage ring, 0 between rings (smooth)."""
    c = 0.5 + 0.5 * np.cos(2 * np.pi * s / app.ring_spacing)
    thr = np.cos(np.pi * app.ring_width) * 0.5 + 0.5
    return np.clip((c - thr) / max(1 - thr, 1e-3), 0.0, 1.0) ** 0.7


def shade(inp: ShadingInputs, app: Appearance) -> np.ndarray:
    """Linear radiance (N, 3) of the hit points under the tip light."""
    P = inp.point_cam.astype(np.float64)
    n = inp.normal_cam.astype(np.float64)
    if app.ring_bump > 0 and inp.ring_s is not None and inp.axis_cam is not None:
        # cartilage relief: tilt the normal along the branch axis with the ring profile's slope
        slope = -np.sin(2 * np.pi * inp.ring_s / app.ring_spacing) * inp.ring_weight * app.ring_bump
        n = n + slope[:, None] * inp.axis_cam
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    a = np.radians(app.light_angle)
    light = app.light_offset * np.array([np.cos(a), np.sin(a), 0.0])
    L = light - P
    dist = np.maximum(np.linalg.norm(L, axis=1), 2e-4)
    l = L / dist[:, None]
    v = -P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-9)
    ndl = np.clip(np.einsum("ij,ij->i", n, l), 0.0, 1.0)
    irr = app.light_power * (D_REF / dist) ** app.falloff
    albedo = _albedo(inp, app)
    rad = albedo * (irr * ndl + app.ambient * app.light_power)[:, None]
    if app.specular_strength > 0:
        h = l + v
        h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-9)
        ndh = np.clip(np.einsum("ij,ij->i", n, h), 0.0, 1.0)
        wet = 1.0
        if app.wetness_variation > 0:
            w = _sample(app, "low", inp.point_ct, 0.0005, 1)[:, 2]  # 4 mm patches of wet film
            wet = np.clip(1.0 + app.wetness_variation * 2.0 * w, 0.0, 2.0)
        spec = app.specular_strength * wet * ndh ** app.shininess * irr * ndl ** 0.5
        rad = rad + spec[:, None] * np.array([1.0, 0.97, 0.92])
    return rad.astype(np.float32)


# =========================================================================== camera
def _vignette(h: int, w: int, cx: float, cy: float, strength: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rmax = max(np.hypot(max(cx, w - 1 - cx), max(cy, h - 1 - cy)), 1.0)
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / rmax**2
    return np.clip(1.0 - strength * r2, 0.0, 1.0)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    k = int(np.ceil(length)) | 1
    ker = np.zeros((k, k), dtype=np.float32)
    c = k // 2
    for s in np.linspace(-length / 2, length / 2, 4 * k):
        x, y = c + s * np.cos(angle), c + s * np.sin(angle)
        ker[int(round(y)), int(round(x))] += 1
    return ker / ker.sum()


def fluid_film(img: np.ndarray, share: float, rgb, seed: int, scale: float = 1.0) -> np.ndarray:
    """A fluid film on the lens over the ``share`` (0..1) of the image (H, W, 3 float) where a
    smooth noise field (``seed``) is highest: the scene seen blurred through it, tinted ``rgb``,
    plus a little of the tint's own scattered light. Fixed in the image: it does not move with the
    scene. (The simulator's ``Appearance.fluid``; the encoder's training augmentation, ``p_film``.)"""
    import cv2

    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xx.ravel() / w * 3.0, yy.ravel() / h * 3.0, np.full(h * w, 0.5)], 1)
    f = gradient_noise(pts, seed).reshape(h, w)
    thr = np.quantile(f, 1.0 - share)
    m = np.clip((f - thr) / 0.08, 0.0, 1.0).astype(np.float32)
    m = cv2.GaussianBlur(m, (0, 0), 2.0 * scale)[..., None]
    blurred = cv2.GaussianBlur(img, (0, 0), 3.0 * scale)
    tint = np.asarray(rgb, dtype=np.float32)
    film = blurred * tint * 0.8 + 0.15 * tint * float(np.percentile(img, 90))
    return img * (1 - m) + film * m


def _lens_artefacts(img: np.ndarray, app: Appearance, scale: float) -> np.ndarray:
    """Bubbles and a fluid film on the lens: fixed in the image for a given appearance seed."""
    h, w = img.shape[:2]
    rng = np.random.default_rng(int(app.seed) + 12345)
    out = img
    if app.fluid > 0:
        out = fluid_film(out, app.fluid, app.fluid_rgb, int(app.seed) % 1000 + 77, scale)
    if app.bubbles > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        peak = float(np.percentile(out, 99)) + 1e-6
        for _ in range(int(app.bubbles)):
            r = rng.uniform(*app.bubble_radius) * w
            cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
            inside = (d < 1.0).astype(np.float32)[..., None]
            rim = np.exp(-((d - 1.0) / 0.06) ** 2)[..., None]
            ang = np.arctan2(yy - cy, xx - cx)
            glint = np.exp(-(((xx - cx + 0.4 * r) ** 2 + (yy - cy + 0.4 * r) ** 2) / (0.12 * r) ** 2))[..., None]
            arc = (0.5 + 0.5 * np.cos(ang + 2.3))[..., None]
            out = out * (1 - 0.25 * inside) + peak * (0.6 * rim * arc + 0.9 * glint)
    return out


class AutoGain:
    """A video camera's exposure control: smooths the per-frame auto-gain in log space
    (``smoothing`` 0 = follow each frame, towards 1 = slow)."""

    def __init__(self, smoothing: float = 0.35):
        self.smoothing = float(smoothing)
        self.log_gain: float | None = None

    def __call__(self, desired: float) -> float:
        lg = float(np.log(max(desired, 1e-12)))
        self.log_gain = lg if self.log_gain is None else self.smoothing * self.log_gain + (1 - self.smoothing) * lg
        return float(np.exp(self.log_gain))


def develop(radiance: np.ndarray, mask: np.ndarray, app: Appearance, rng: np.random.Generator,
            cx: float, cy: float, gain: float | None = None, gain_control: AutoGain | None = None
            ) -> tuple[np.ndarray, float]:
    """Linear radiance (H, W, 3) -> uint8 RGB and the gain used.

    ``gain`` overrides the auto-gain; ``gain_control`` (an :class:`AutoGain`) smooths it across
    a video; ``mask`` marks the pixels that saw the wall (the auto-gain's statistics).
    """
    import cv2

    h, w = radiance.shape[:2]
    scale = w / 200.0
    img = radiance.astype(np.float32)
    if app.vignetting > 0:
        img = img * _vignette(h, w, cx, cy, app.vignetting)[..., None]
    img = img * np.asarray(app.white_balance, dtype=np.float32)
    if app.motion_blur > 0:
        ker = _motion_kernel(max(app.motion_blur * scale, 1.0), rng.uniform(0, np.pi))
        img = cv2.filter2D(img, -1, ker, borderType=cv2.BORDER_REFLECT)
    if app.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), app.blur_sigma * scale)
    if gain is None:
        if app.autogain:
            luma = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            vals = luma[mask] if mask.any() else luma.ravel()
            ref = float(np.percentile(vals, app.autogain_percentile)) if vals.size else 0.0
            gain = app.autogain_target / ref if ref > 1e-12 else app.max_gain
            gain = float(min(gain, app.max_gain))
            if gain_control is not None:
                gain = gain_control(gain)
        else:
            gain = 1.0
    img = img * gain
    if app.bubbles > 0 or app.fluid > 0:
        img = _lens_artefacts(img, app, scale)
    if app.shot_noise > 0 or app.read_noise > 0:
        sd = np.sqrt(app.shot_noise * np.clip(img, 0, None) + app.read_noise**2)
        img = img + sd * rng.standard_normal(img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0) ** (1.0 / app.gamma)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), float(gain)
