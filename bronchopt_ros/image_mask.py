"""The endoscope image's black surround: found, filled, and kept out of the tracker's evidence.

Many endoscope video processors put the picture in a circular or octagonal field with black
corners. The encoder never saw one in training (its depth error on simulated views rises from
0.057 to 0.191 with the inscribed circle's surround blacked out), the registration would compare
the black as a far wall, and the surround's edge is a fixed contour the odometry could follow.

:class:`BorderMask` finds the surround - pixels black (every channel at most ``threshold``) and
connected to the image's border in each of the first ``frames`` frames - and keeps it for the
procedure; :func:`fill_surround` fills it by reflecting the picture across its edge, so the
encoder sees a plausible full image. The tracker then leaves the surround out of the
registration (the depth target's weights) and of the odometry (its corners and pixels).
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["BorderMask", "fill_surround"]


class BorderMask:
    """The static black surround of a video's frames (see the module docstring).

    Call it on each frame: returns the picture's mask (True: the scene), or None when the frames
    have no surround (under ``min_fraction`` of the image) or none is known yet. The estimate
    is the surround common to the frames seen so far, frames more than ``max_fraction`` black
    (lens covered, light off) left out; after ``frames`` frames it is fixed (a new image size
    starts again)."""

    def __init__(self, frames: int = 5, threshold: int = 4, min_fraction: float = 0.005, max_fraction: float = 0.5):
        self.frames, self.threshold = int(frames), int(threshold)
        self.min_fraction, self.max_fraction = float(min_fraction), float(max_fraction)
        self.reset()

    def reset(self) -> None:
        self._surround: np.ndarray | None = None  # (H, W) bool, black and border-connected in every frame so far
        self._mask: np.ndarray | None = None  # the picture's mask from it (one array while it holds), or None
        self._seen = 0
        self._fill_maps = None

    @property
    def fixed(self) -> bool:
        return self._seen >= self.frames

    def __call__(self, rgb: np.ndarray, learn: bool = True) -> np.ndarray | None:
        """The picture's mask for ``rgb`` (see the class docstring); ``learn`` False: the frame
        does not count towards the estimate."""
        if self._surround is not None and self._surround.shape != rgb.shape[:2]:
            if not learn:
                return None
            self.reset()
        if learn and not self.fixed:
            s = surround_of(rgb, self.threshold)
            if s.mean() <= self.max_fraction:  # (a frame mostly black - lens covered, no light - tells nothing)
                self._surround = s if self._surround is None else (self._surround & s)
                self._seen += 1
                self._fill_maps = None
                self._mask = None if self._surround.mean() < self.min_fraction else ~self._surround
        return self._mask

    def fill(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """:func:`fill_surround` with this video's maps (made once per mask)."""
        if self._fill_maps is None or self._fill_maps[0].shape != mask.shape:
            self._fill_maps = reflection_maps(mask)
        return cv2.remap(rgb, self._fill_maps[0], self._fill_maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def surround_of(rgb: np.ndarray, threshold: int = 4) -> np.ndarray:
    """(H, W) bool: the pixels black in every channel (<= ``threshold``) connected to the border."""
    black = (rgb.max(axis=-1) if rgb.ndim == 3 else rgb) <= threshold
    n, labels = cv2.connectedComponents(black.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros(black.shape, bool)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    return np.isin(labels, edge)


def reflection_maps(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) float32 for ``cv2.remap``: inside ``mask`` each pixel itself; outside, its
    mirror image across the nearest picture pixel (or that pixel, when the mirror falls outside)."""
    h, w = mask.shape
    outside = (~mask).astype(np.uint8)
    _, labels = cv2.distanceTransformWithLabels(outside, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    # Each picture pixel (a zero of ``outside``) has its own label, numbered in raster order.
    inside_yx = np.argwhere(outside == 0)
    yy, xx = np.mgrid[0:h, 0:w]
    near = inside_yx[np.clip(labels - 1, 0, len(inside_yx) - 1)]
    ny, nx = near[..., 0], near[..., 1]
    ry, rx = 2 * ny - yy, 2 * nx - xx
    ok = (rx >= 0) & (rx < w) & (ry >= 0) & (ry < h)
    ok[ok] = mask[ry[ok], rx[ok]]
    my = np.where(mask, yy, np.where(ok, ry, ny)).astype(np.float32)
    mx = np.where(mask, xx, np.where(ok, rx, nx)).astype(np.float32)
    return mx, my


def fill_surround(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rgb`` with the pixels outside ``mask`` filled by reflecting the picture across its edge."""
    mx, my = reflection_maps(mask)
    return cv2.remap(rgb, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
