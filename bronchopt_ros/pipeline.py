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
    # A wider field of view than this (deg; 0: any) is cropped about the principal point for the
    # encoder, which was trained at 70-95 deg (the odometry and the lighting keep the whole frame):
    # its depth error grows past ~100 deg (scale-invariant log-depth on simulated views: 0.057 at
    # 85 deg, 0.076 at 110, 0.127 at 125). Procedures filmed at 120 deg (450 frames): validation
    # 2500 / 2501 2.24 / 1.29 mm, 0.191 / 0.158 rad, 49 / 72 % -> 0.75 / 1.76, 0.055 / 0.082, 98 / 92 %
    # (90 deg: 0.73 / 2.29 mm; 95: 0.71 / 1.85); test 3101 / 3102 3.22 / 1.60 mm, 56 / 95 % -> 0.71 /
    # 0.87, 94 / 100 %.
    max_fov_deg: float = 100.0
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
                 principal_point_tolerance: float = 0.03, max_fov_deg: float = 100.0):
        self.encoder = encoder
        self.name = getattr(encoder, "backend_name", "torch")
        self.lighting = lighting if lighting is not None and lighting.active else None
        self.principal_point_tolerance = principal_point_tolerance
        self.max_fov_deg = max_fov_deg

    def window(self, camera: Camera) -> tuple[int, int, int, int]:
        """The encoder's window on the frame (:func:`encoder_window`)."""
        return encoder_window(camera, self.principal_point_tolerance, self.max_fov_deg)

    def __call__(self, frame: Frame) -> DepthTarget:
        """The frame's depth target, on the encoder's grid over its :meth:`window` of the frame."""
        rgb = frame.rgb if self.lighting is None else self.lighting(frame.rgb, frame.stamp)
        camera = frame.camera
        win = self.window(camera)
        whole = win == (0, 0, camera.width, camera.height)
        if not whole:
            rgb, camera = window_image(rgb, win), camera.window(*win)
        with torch.no_grad():  # (not inference_mode: paper mode differentiates through the similarity)
            # The global embedding only when relocalising (made on demand: ~10 % of the encoder).
            out = self.encoder.encode_rgb(rgb, embedding=False)
        ld = out.log_depth.float().cpu()
        h, w = ld.shape[-2:]
        conf = out.confidence.float().cpu() if out.confidence is not None else torch.ones_like(ld)
        conf = conf.reshape(h, w).clamp(0, 1)
        if not whole:  # (pixels added around the frame are no evidence: left out of the registration)
            conf = conf * torch.from_numpy(_inside(win, frame.camera, w, h))
        if frame.mask is not None:  # (nor is the video's filled black surround)
            m = frame.mask.astype(np.float32)
            m = cv2.resize(m if whole else window_image(m, win), (w, h), interpolation=cv2.INTER_AREA)
            conf = conf * torch.from_numpy((m >= 0.999).astype(np.float32))
        return DepthTarget(ld.reshape(h, w), conf, camera.scaled(w, h),
                           features=out.features, embedding=out.embedding,
                           embed=lambda: self.encoder.embed_rgb(out))

    def registered(self, frame: Frame, target: DepthTarget, pose, renderer) -> None:
        """The tracker registered ``frame`` confidently at ``pose`` (the lighting's next depth)."""
        if self.lighting is not None:
            log_depth, camera = target.log_depth.numpy(), target.camera
            win = self.window(frame.camera)
            if win != (0, 0, frame.camera.width, frame.camera.height):
                # (the lighting works on the frame itself: the depth resampled onto it; outside a
                # cropped window the nearest edge's, which only the re-lighting of pixels the
                # encoder does not see uses)
                log_depth, camera = _onto_frame(log_depth, camera, frame.camera, win)
            self.lighting.registered(frame.rgb, frame.stamp, log_depth, camera, pose, renderer)

    def idle(self) -> None:
        """Time to spare before the next frame: the lighting's work for the last registered frame."""
        if self.lighting is not None:
            self.lighting.idle()


def encoder_window(camera: Camera, principal_point_tolerance: float, max_fov_deg: float = 0.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the frame's pixels [y0:y1, x0:x1] the encoder sees - beyond the frame
    where it is padded. A principal point further than ``principal_point_tolerance`` x the size
    from the centre is centred by padding the near side (:meth:`Camera.centring_pad`; the
    encoder was trained with it within ~2 % sd); then, with ``max_fov_deg`` > 0, a wider field of
    view is cropped to that about the principal point (the encoder was trained at 70-95 deg)."""
    left, right, top, bottom = camera.centring_pad(principal_point_tolerance)
    x0, x1, y0, y1 = -left, camera.width + right, -top, camera.height + bottom
    if max_fov_deg > 0:
        t = np.tan(np.radians(max_fov_deg) / 2.0)
        hx, hy = camera.fx * t, camera.fy * t  # px from the principal point to the window's edge
        x0, x1 = max(x0, int(round(camera.cx + 0.5 - hx))), min(x1, int(round(camera.cx + 0.5 + hx)))
        y0, y1 = max(y0, int(round(camera.cy + 0.5 - hy))), min(y1, int(round(camera.cy + 0.5 + hy)))
    return x0, y0, x1, y1


def window_image(rgb: np.ndarray, win: tuple[int, int, int, int]) -> np.ndarray:
    """The frame's pixels in ``win`` (:func:`encoder_window`), edge pixels repeated beyond it."""
    x0, y0, x1, y1 = win
    h, w = rgb.shape[:2]
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        rgb = cv2.copyMakeBorder(np.ascontiguousarray(rgb), *pad, cv2.BORDER_REPLICATE)
    x0, y0 = x0 + pad[2], y0 + pad[0]
    return np.ascontiguousarray(rgb[y0:y0 + (win[3] - win[1]), x0:x0 + (win[2] - win[0])])


def _inside(win: tuple[int, int, int, int], frame_camera: Camera, w: int, h: int) -> np.ndarray:
    """(h, w) float32 mask of a (w, h) grid over the window ``win`` of the frame: 1 where a cell
    lies wholly within the frame, else 0."""
    x0, y0, x1, y1 = win
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    u0, u1 = -x0 * sx, (frame_camera.width - x0) * sx  # the frame, in grid cells
    v0, v1 = -y0 * sy, (frame_camera.height - y0) * sy
    u, v = np.arange(w), np.arange(h)  # cell u spans [u, u + 1)
    inside_u = (u >= u0 - 1e-6) & (u + 1 <= u1 + 1e-6)
    inside_v = (v >= v0 - 1e-6) & (v + 1 <= v1 + 1e-6)
    return (inside_v[:, None] & inside_u[None, :]).astype(np.float32)


def _onto_frame(grid: np.ndarray, camera: Camera, frame_camera: Camera,
                win: tuple[int, int, int, int]) -> tuple[np.ndarray, Camera]:
    """``grid`` (on ``camera``: the window ``win``'s, scaled) resampled over the frame, at the same
    cell size, on ``frame_camera`` scaled to it (beyond the window: the nearest edge's value)."""
    x0, y0, x1, y1 = win
    sx, sy = camera.width / (x1 - x0), camera.height / (y1 - y0)  # grid cells per frame pixel
    wu, hu = max(1, round(frame_camera.width * sx)), max(1, round(frame_camera.height * sy))
    out_cam = frame_camera.scaled(wu, hu)
    # an output cell's centre, (x + 0.5) * W / wu in frame pixels, lies at that minus x0 in the
    # window's, times sx in grid cells (whose centres are at + 0.5)
    ax, ay = frame_camera.width / wu * sx, frame_camera.height / hu * sy
    m = np.array([[ax, 0.0, 0.5 * ax - x0 * sx - 0.5], [0.0, ay, 0.5 * ay - y0 * sy - 0.5]])
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
                                          LightCompensator(cfg.lighting), cfg.principal_point_tolerance,
                                          cfg.max_fov_deg)
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
    """Undistort (plumb_bob or equidistant) and shrink the image so its longer side is at most ``max_size``
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
