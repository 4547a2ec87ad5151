"""How the endoscope image looks: tissue, light, optics, sensor and artefacts, as one dataclass.

:func:`sample_appearance` draws a random :class:`Appearance` for a domain. The ``train`` and
``test`` domains are disjoint on purpose (a model trained on one must generalise to the other):

========================= ======================== ========================
parameter                 train                    test
========================= ======================== ========================
mucosa hue                pink-red, 345-365 deg    salmon-orange, 8-22 deg
texture family            ``fbm`` (smooth)         ``ridged`` (cellular)
vessel contrast           0.10-0.35                0.40-0.60
specular shininess        15-50                    60-120
light offset from lens    0-0.6 mm                 0.8-1.5 mm
========================= ======================== ========================

Other parameters share ranges. ``domain="any"`` draws either domain's ranges at random.
:meth:`Appearance.paper_benchmark` is the BronchOpt benchmark's plain rendering (Lambertian,
light at the camera, ambient 0.1, no falloff, colour (1, 0.5, 0.5), gamma 2.2).
"""
from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["Appearance", "sample_appearance", "DOMAINS"]

DOMAINS = ("train", "test", "any")


@dataclass
class Appearance:
    """Every knob of the image model (:mod:`bronchopt_ros.sim.endoscope`). Colours are linear
    RGB in [0, 1]; lengths in metres; pixel quantities are for a 200 px wide image and scale
    with the image width."""

    domain: str = "train"
    seed: int = 0  # seeds the procedural textures (solid noise is fixed to the CT frame)
    # mucosa
    base_rgb: tuple[float, float, float] = (0.85, 0.30, 0.26)
    colour_variation: float = 0.12  # low-frequency hue/brightness patches
    texture_family: str = "fbm"  # "fbm" | "ridged"
    texture_scale: float = 1.5e-3  # size of the finest texture feature (m)
    texture_octaves: int = 3
    texture_contrast: float = 0.25
    # vessels
    vessel_scale: float = 4e-3  # typical vessel spacing (m); smaller = denser
    vessel_width: float = 0.06  # relative line width
    vessel_contrast: float = 0.25
    vessel_rgb: tuple[float, float, float] = (0.45, 0.06, 0.08)
    # cartilage rings (trachea and large bronchi)
    ring_contrast: float = 0.2  # paler colour on the rings
    ring_bump: float = 0.35  # shading relief of the rings
    ring_spacing: float = 4e-3  # m
    ring_width: float = 0.45  # share of the spacing
    ring_max_generation: int = 4  # rings fade out by this generation
    # wet specular (Blinn-Phong)
    specular_strength: float = 0.5
    shininess: float = 30.0
    wetness_variation: float = 0.5  # patchiness of the wet film
    # light at the tip
    light_power: float = 1.0
    falloff: float = 2.0  # irradiance ~ 1 / distance**falloff (2 = inverse square)
    ambient: float = 0.02  # share of the irradiance at 10 mm that reaches everything
    light_offset: float = 0.3e-3  # light guide offset from the lens (m)
    light_angle: float = 0.0  # direction of that offset in the image plane (deg from +x towards +y)
    # optics and sensor
    vignetting: float = 0.35  # brightness loss at the image corner
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    autogain: bool = True
    autogain_target: float = 0.8  # the percentile below maps to this (linear, before gamma)
    autogain_percentile: float = 97.0
    max_gain: float = 1e4
    gamma: float = 2.2
    blur_sigma: float = 0.6  # px
    shot_noise: float = 0.004  # variance per unit signal (linear)
    read_noise: float = 0.004  # std (linear)
    # artefacts
    bubbles: int = 0
    bubble_radius: tuple[float, float] = (0.03, 0.12)  # share of the image width
    motion_blur: float = 0.0  # px length of a linear motion blur
    fluid: float = 0.0  # 0..1 share of the view behind a fluid film
    fluid_rgb: tuple[float, float, float] = (0.9, 0.8, 0.55)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Appearance":
        names = {f.name: f for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    @classmethod
    def paper_benchmark(cls) -> "Appearance":
        """The BronchOpt benchmark's plain look (../shared/REFERENCE.md)."""
        return cls(domain="paper", base_rgb=(1.0, 0.5, 0.5), colour_variation=0.0, texture_contrast=0.0,
                   vessel_contrast=0.0, ring_contrast=0.0, ring_bump=0.0, specular_strength=0.0,
                   falloff=0.0, ambient=0.1, light_offset=0.0, vignetting=0.0, autogain=False,
                   blur_sigma=0.0, shot_noise=0.0, read_noise=0.0)

    @property
    def is_plain(self) -> bool:
        return self.domain == "paper"


def _hsv(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return (float(r), float(g), float(b))


def sample_appearance(rng: np.random.Generator, domain: str = "train",
                      light_offset: tuple[float, float] | None = None) -> Appearance:
    """A random appearance of ``domain`` (``train``, ``test`` or ``any``); see the module doc.

    ``light_offset`` (min, max in m) replaces the domain's range of the light guide's offset (a
    given bronchoscope's geometry); every other setting is drawn exactly as without it."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got '{domain}'")
    if light_offset is not None and not 0.0 <= light_offset[0] <= light_offset[1] < 0.01:
        raise ValueError(f"light_offset must be (min, max) with 0 <= min <= max < 0.01 m, got {light_offset}")
    if domain == "any":
        domain = "train" if rng.random() < 0.5 else "test"
    test = domain == "test"
    u = rng.uniform
    hue = u(8.0, 22.0) if test else u(345.0, 365.0)
    base = _hsv(hue, u(0.62, 0.85), u(0.7, 0.95))
    vessel = _hsv(hue + u(-8, 4), u(0.8, 0.95), u(0.35, 0.55))
    artefact = 1.5 if test else 1.0
    return Appearance(
        domain=domain,
        seed=int(rng.integers(0, 2**31 - 1)),
        base_rgb=base,
        colour_variation=u(0.05, 0.2),
        texture_family="ridged" if test else "fbm",
        texture_scale=u(0.8e-3, 2.5e-3),
        texture_octaves=int(rng.integers(2, 5)),
        texture_contrast=u(0.1, 0.35),
        vessel_scale=u(2.5e-3, 7e-3),
        vessel_width=u(0.03, 0.09),
        vessel_contrast=u(0.4, 0.6) if test else u(0.1, 0.35),
        vessel_rgb=vessel,
        ring_contrast=u(0.05, 0.3),
        ring_bump=u(0.1, 0.5),
        ring_spacing=u(3e-3, 5e-3),
        ring_width=u(0.3, 0.55),
        ring_max_generation=int(rng.integers(3, 6)),
        specular_strength=u(0.2, 0.9),
        shininess=u(60.0, 120.0) if test else u(15.0, 50.0),
        wetness_variation=u(0.2, 0.8),
        light_power=u(0.5, 2.0),
        falloff=u(1.8, 2.2),
        ambient=u(0.005, 0.05),
        light_offset=u(*light_offset) if light_offset is not None else u(0.8e-3, 1.5e-3) if test else u(0.0, 0.6e-3),
        vignetting=u(0.15, 0.6),
        white_balance=(u(0.92, 1.08), 1.0, u(0.92, 1.08)),
        autogain_target=u(0.65, 0.9),
        autogain_percentile=u(95.0, 99.5),
        gamma=u(1.9, 2.4),
        blur_sigma=u(0.2, 1.0),
        shot_noise=u(0.001, 0.008),
        read_noise=u(0.001, 0.008),
        bubbles=int(rng.poisson(0.4 * artefact)) if rng.random() < 0.3 * artefact else 0,
        motion_blur=u(1.0, 6.0) if rng.random() < 0.15 * artefact else 0.0,
        fluid=u(0.1, 0.4) if rng.random() < 0.1 * artefact else 0.0,
        fluid_rgb=_hsv(u(35, 55), u(0.2, 0.5), u(0.7, 0.95)),
    )
