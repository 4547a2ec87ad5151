"""Builds the per-procedure tracking pipeline from one config: renderer + encoder + tracker.

The navigator node and the offline evaluator both call :func:`build_tracker`, so there is exactly
one tracker implementation and one way to configure it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .geometry import Camera
from .lighting import LightCompensator, LightingConfig
from .odometry import OdometryConfig
from .registration import DepthTarget
from .render.base import make_renderer
from .tracker import Frame, Tracker, TrackerConfig

__all__ = ["PipelineConfig", "EncoderDepthPredictor", "build_tracker", "prepare_frame", "load_default_encoder"]

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    renderer_backend: str = "auto"  # auto | cpu | nvdiffrast
    encoder_backend: str = "torch"  # auto | torch | onnx | tensorrt (torch is faster than ONNX Runtime here)
    encoder_weights: str = ""  # empty: the shipped weights
    encoder_input_size: int = 128  # the RGB frame is resized to this (square) for the encoder
    # A frame whose principal point is further than this share of its size from the image's centre
    # is padded (edge pixels repeated, left out of the registration) to centre it for the encoder,
    # which was trained with principal points within ~2 % (sd) of the centre and biases the depth of
    # an image whose optical axis is far off it (negative: never). Six validation procedures x two
    # off-centre crops (the axis 5-8 % off), 300 frames each: 1.81 mm / 0.095 rad -> 1.50 / 0.072.
    principal_point_tolerance: float = 0.03
    device: str = "cpu"
    relocalisation: bool = True  # build the centerline view index (global embeddings) for relocalisation
    relocalisation_cache: str = ""  # directory keeping built indices (one file per airway + encoder); empty: none
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    odometry: OdometryConfig = field(default_factory=OdometryConfig)
    lighting: LightingConfig = field(default_factory=LightingConfig)  # the scope light's offset, compensated


class EncoderDepthPredictor:
    """The encoder's depth head as the tracker's :class:`~bronchopt_ros.tracker.DepthPredictor`.

    With a ``lighting`` compensator the frame is re-lit to an on-axis light first
    (:mod:`bronchopt_ros.lighting`), from the depth of the last frame the tracker registered
    (:meth:`registered`)."""

    def __init__(self, encoder, lighting: LightCompensator | None = None,
                 principal_point_tolerance: float = 0.03):
        self.encoder = encoder
        self.name = getattr(encoder, "backend_name", "torch")
        self.lighting = lighting if lighting is not None and lighting.active else None
        self.principal_point_tolerance = principal_point_tolerance

    def __call__(self, frame: Frame) -> DepthTarget:
        """The frame's depth target (on the encoder's grid: its ``camera`` is the padded one when
        the frame's principal point is far off centre - see ``principal_point_tolerance``)."""
        rgb = frame.rgb if self.lighting is None else self.lighting(frame.rgb, frame.stamp)
        camera = frame.camera
        pad = camera.centring_pad(self.principal_point_tolerance)
        if any(pad):
            left, right, top, bottom = pad
            rgb = cv2.copyMakeBorder(np.ascontiguousarray(rgb), top, bottom, left, right, cv2.BORDER_REPLICATE)
            camera = camera.padded(*pad)
        with torch.no_grad():  # (not inference_mode: paper mode differentiates through the similarity)
            # The global embedding only when relocalising (made on demand: ~10 % of the encoder).
            out = self.encoder.encode_rgb(rgb, embedding=False)
        ld = out.log_depth.float().cpu()
        h, w = ld.shape[-2:]
        conf = out.confidence.float().cpu() if out.confidence is not None else torch.ones_like(ld)
        conf = conf.reshape(h, w).clamp(0, 1)
        if any(pad):  # (the added pixels are no evidence: left out of the registration)
            conf = conf * torch.from_numpy(_inside(pad, camera, w, h))
        return DepthTarget(ld.reshape(h, w), conf, camera.scaled(w, h),
                           features=out.features, embedding=out.embedding,
                           embed=lambda: self.encoder.embed_rgb(out))

    def registered(self, frame: Frame, target: DepthTarget, pose, renderer) -> None:
        """The tracker registered ``frame`` confidently at ``pose`` (the lighting's next depth)."""
        if self.lighting is not None:
            log_depth, camera = target.log_depth.numpy(), target.camera
            pad = frame.camera.centring_pad(self.principal_point_tolerance)
            if any(pad):  # (the lighting works on the frame itself: its depth without the padding)
                log_depth, camera = _unpadded(log_depth, camera, frame.camera, pad)
            self.lighting.registered(frame.rgb, frame.stamp, log_depth, camera, pose, renderer)

    def idle(self) -> None:
        """Time to spare before the next frame: the lighting's work for the last registered frame."""
        if self.lighting is not None:
            self.lighting.idle()


def _inside(pad: tuple[int, int, int, int], padded: Camera, w: int, h: int) -> np.ndarray:
    """(h, w) float32 mask of a (w, h) grid over the ``padded`` image: 1 where a cell lies wholly
    within the original image (``pad`` = left, right, top, bottom pixels added), else 0."""
    left, right, top, bottom = pad
    sx, sy = w / padded.width, h / padded.height
    u0, u1 = left * sx, (padded.width - right) * sx  # the original image, in grid cells
    v0, v1 = top * sy, (padded.height - bottom) * sy
    u, v = np.arange(w), np.arange(h)  # cell u spans [u, u + 1)
    inside_u = (u >= u0 - 1e-6) & (u + 1 <= u1 + 1e-6)
    inside_v = (v >= v0 - 1e-6) & (v + 1 <= v1 + 1e-6)
    return (inside_v[:, None] & inside_u[None, :]).astype(np.float32)


def _unpadded(grid: np.ndarray, camera: Camera, frame_camera: Camera,
              pad: tuple[int, int, int, int]) -> tuple[np.ndarray, Camera]:
    """``grid`` (on ``camera``: the padded image's, scaled) resampled over the original image only:
    the same cell size, on ``frame_camera`` scaled to it."""
    left, right, top, bottom = pad
    sx = camera.width / (frame_camera.width + left + right)  # grid cells per padded-image pixel
    sy = camera.height / (frame_camera.height + top + bottom)
    wu, hu = max(1, round(frame_camera.width * sx)), max(1, round(frame_camera.height * sy))
    out_cam = frame_camera.scaled(wu, hu)
    # output cell centre (x + 0.5) spans frame pixels (x + 0.5) * W / wu; in the padded image add
    # ``left``; in grid cells multiply by sx (cell centres at +0.5)
    ax, ay = frame_camera.width / wu * sx, frame_camera.height / hu * sy
    m = np.array([[ax, 0.0, 0.5 * ax + left * sx - 0.5], [0.0, ay, 0.5 * ay + top * sy - 0.5]])
    out = cv2.warpAffine(grid.astype(np.float32), m, (wu, hu), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out, out_cam


def load_default_encoder(cfg: PipelineConfig):
    from .encoder import EncoderConfig, load_encoder

    return load_encoder(EncoderConfig(backend=cfg.encoder_backend, weights=cfg.encoder_weights or None,
                                      input_size=cfg.encoder_input_size, device=cfg.device))


def build_tracker(airway, cfg: PipelineConfig, encoder=None, predictor=None, relocaliser=None) -> Tracker:
    """Renderer for ``airway`` + the encoder's depth predictor (or ``predictor``) + a Tracker."""
    renderer = make_renderer(airway, backend=cfg.renderer_backend,
                             device=None if cfg.device == "cpu" else cfg.device)
    if predictor is None:
        predictor = EncoderDepthPredictor(encoder if encoder is not None else load_default_encoder(cfg),
                                          LightCompensator(cfg.lighting), cfg.principal_point_tolerance)
    if relocaliser is None and cfg.relocalisation and getattr(airway, "centerline", None) is not None \
            and hasattr(predictor, "encoder"):
        relocaliser = _index_relocaliser(renderer, predictor.encoder, airway, cfg.relocalisation_cache)
    tracker = Tracker(renderer, predictor, cfg.tracker, relocaliser=relocaliser,
                      centerline=getattr(airway, "centerline", None), odometry=cfg.odometry)
    tracker.renderer_backend = getattr(renderer, "name", "cpu")
    tracker.encoder_backend = getattr(predictor, "name", "custom")
    return tracker


def _index_relocaliser(renderer, encoder, airway, cache_dir: str = ""):
    """The relocaliser: candidates from the centerline view index (built on first use; call
    ``relocalise.index.warm()`` to build it ahead, e.g. in a background thread), kept in
    ``cache_dir`` when given."""
    from .relocalise import LazyIndex, index_key

    cam = Camera(200, 200, 110.2, 110.3, 100.6, 103.7)  # the index only needs a typical field of view
    cache = None
    if cache_dir:
        from pathlib import Path

        from .encoder.backends import file_hash

        weights = getattr(encoder, "weights", None)
        enc_id = file_hash(weights) if weights is not None and Path(weights).exists() else type(encoder).__name__
        key = index_key(airway, f"{enc_id}/{getattr(encoder, 'input_size', '')}", cam)
        cache = Path(cache_dir).expanduser() / f"reloc-{key}.npz"
    index = LazyIndex(renderer, encoder, airway.centerline, cam, cache=cache)

    def relocalise(frame: Frame, target: DepthTarget) -> list:
        emb = target.global_embedding()
        return index.query(emb) if emb is not None else []

    relocalise.index = index
    return relocalise


def prepare_frame(rgb: np.ndarray, camera: Camera, stamp: float, max_size: int = 256) -> Frame:
    """Undistort (plumb_bob) and shrink the image so its longer side is at most ``max_size``
    (the encoder never needs more), adjusting the camera to match."""
    if camera.has_distortion:
        rgb = camera.undistort_image(rgb)
        camera = camera.undistorted()
    h, w = rgb.shape[:2]
    if (w, h) != camera.size:
        raise ValueError(f"image is {w}x{h} but camera_info says {camera.width}x{camera.height}")
    s = max_size / max(w, h)
    if s < 1.0:
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        camera = camera.scaled(nw, nh)
    return Frame(np.ascontiguousarray(rgb), camera, float(stamp))
