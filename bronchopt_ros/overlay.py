"""Debug overlay: the frame with the airway rendered at the estimated pose on top."""
from __future__ import annotations

import cv2
import numpy as np

from .geometry import Camera, Pose


def render_overlay(rgb: np.ndarray, renderer, camera: Camera, pose: Pose, alpha: float = 0.45,
                   state_text: str = "") -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) blended with a colour-coded depth of the airway at ``pose``
    (near = warm, far = cool) and the depth edges (lumen openings) drawn in green."""
    h, w = rgb.shape[:2]
    out = renderer.render(camera.scaled(w, h), pose, normals=False)
    depth = out.depth.numpy()
    valid = out.valid.numpy()
    img = rgb.copy()
    if valid.any():
        d = np.log(np.where(valid, depth, np.nan))
        lo, hi = np.nanpercentile(d, 2), np.nanpercentile(d, 98)
        norm = np.clip((np.nan_to_num(d, nan=hi) - lo) / max(hi - lo, 1e-6), 0, 1)
        colour = cv2.applyColorMap((255 * (1 - norm)).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
        m = valid[..., None]
        img = np.where(m, (1 - alpha) * img + alpha * colour, img).astype(np.uint8)
        edges = cv2.Canny((255 * norm).astype(np.uint8), 40, 120) > 0
        img[edges] = (0, 255, 0)
    if state_text:
        cv2.putText(img, state_text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return img
