"""Frame-to-frame visual odometry anchored on the CT: the tracker's motion prediction.

Registration against the CT is weak where the airway looks the same over a stretch (the trachea
is a tube: sliding along it or rolling about it barely changes the depth), and strong elsewhere.
The wall's texture (cartilage rings, mucosa, vessels) moves through the video exactly along those
weak directions, so the relative motion between two frames is measured from it:

1. corners of the previous frame (:func:`cv2.goodFeaturesToTrack`) are lifted to 3D with the CT
   depth seen at the previous estimate (:meth:`Renderer.depth_at`: metric, so no scale drift);
2. they are followed into the new frame by pyramidal Lucas-Kanade with a forward-backward check;
3. :func:`cv2.solvePnPRansac` + :func:`cv2.solvePnPRefineLM` give the camera's motion.

The tracker starts each frame's registration from the previous pose moved by this motion and
keeps the registration near it (a prior), so the CT corrects the odometry's drift where it can
and the odometry holds the pose where the CT cannot.

    odo = FrameOdometry(OdometryConfig())
    motion = odo.track(gray, camera)           # cam_prev -> cam_now as a Pose increment, or None
    odo.keyframe(gray, camera, pose, renderer) # after the frame: this frame becomes the reference
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import Camera, Pose

__all__ = ["OdometryConfig", "OdometryResult", "FrameOdometry", "to_gray"]


@dataclass
class OdometryConfig:
    """Settings of :class:`FrameOdometry` (defaults; not node parameters yet: the node exposes
    ``tracker.odometry`` on/off and the prior's sigmas)."""

    max_corners: int = 200  # corners detected in the reference frame
    quality: float = 0.005  # goodFeaturesToTrack quality level (relative to the best corner)
    min_distance: float = 5.0  # px between corners (at 200 px)
    window: int = 15  # Lucas-Kanade window (px)
    levels: int = 2  # Lucas-Kanade pyramid levels
    fb_max_px: float = 0.5  # forward-backward disagreement above this: the track is dropped
    ransac_px: float = 1.0  # PnP-RANSAC inlier threshold (px)
    min_inliers: int = 12  # fewer inliers: no odometry for this frame
    max_step_m: float = 0.005  # a larger motion between two frames is implausible: rejected
    max_step_rad: float = 0.3


@dataclass
class OdometryResult:
    motion: Pose  # the new camera in the previous camera's frame (pose_now = pose_prev @ motion)
    inliers: int
    tracked: int


def to_gray(rgb: np.ndarray, shading_sigma: float = 4.0) -> np.ndarray:
    """The frame's texture as 8-bit grey: luminance divided by its blur (Gaussian, ``shading_sigma``
    px at 200 px wide), so the scope's own light falloff, which moves with the camera, is removed
    and what the tracker follows is fixed to the wall (0 = plain luminance)."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if shading_sigma <= 0:
        return g
    s = shading_sigma * max(g.shape) / 200.0
    f = g.astype(np.float32)
    ratio = f / (cv2.GaussianBlur(f, (0, 0), s) + 4.0)
    return np.clip(128.0 * ratio, 0, 255).astype(np.uint8)


class FrameOdometry:
    def __init__(self, config: OdometryConfig | None = None):
        self.config = config or OdometryConfig()
        self.reset()

    def reset(self) -> None:
        self._gray: np.ndarray | None = None
        self._uv: np.ndarray | None = None  # (N, 1, 2) float32 corners of the reference frame
        self._xyz: np.ndarray | None = None  # (N, 3) their points in the reference camera (metres)

    def keyframe(self, gray: np.ndarray, camera: Camera, pose: Pose, renderer) -> int:
        """Make ``gray`` (seen by ``camera`` at ``pose``) the reference; returns the usable corners."""
        c = self.config
        scale = max(camera.width, camera.height) / 200.0
        uv = cv2.goodFeaturesToTrack(gray, c.max_corners, c.quality, c.min_distance * scale)
        self._gray = None
        if uv is None or len(uv) < c.min_inliers:
            return 0
        uv = uv.reshape(-1, 2).astype(np.float64)
        z = renderer.depth_at(camera, pose, uv)
        ok = z > 0
        if int(ok.sum()) < c.min_inliers:
            return 0
        uv, z = uv[ok], z[ok]
        self._xyz = np.stack([(uv[:, 0] - camera.cx) / camera.fx * z, (uv[:, 1] - camera.cy) / camera.fy * z, z], 1)
        self._uv = uv.astype(np.float32).reshape(-1, 1, 2)
        self._gray = gray
        return len(uv)

    def track(self, gray: np.ndarray, camera: Camera) -> OdometryResult | None:
        """The camera's motion from the reference frame to ``gray`` (None when it cannot be trusted)."""
        c = self.config
        if self._gray is None or self._gray.shape != gray.shape:
            return None
        lk = dict(winSize=(c.window, c.window), maxLevel=c.levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._uv, None, **lk)
        if p1 is None:
            return None
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, p1, None, **lk)
        fb = np.linalg.norm((p0b - self._uv).reshape(-1, 2), axis=1)
        ok = (st1[:, 0] == 1) & (st2[:, 0] == 1) & (fb < c.fb_max_px)
        if int(ok.sum()) < c.min_inliers:
            return None
        obj = self._xyz[ok]
        img = p1.reshape(-1, 2)[ok].astype(np.float64)
        K = camera.K
        rvec, tvec = np.zeros((3, 1)), np.zeros((3, 1))
        found, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, K, None, rvec, tvec, useExtrinsicGuess=True,
                                                    iterationsCount=100, reprojectionError=c.ransac_px,
                                                    flags=cv2.SOLVEPNP_ITERATIVE)
        if not found or inl is None or len(inl) < c.min_inliers:
            return None
        inl = inl[:, 0]
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec, tvec)
        R, _ = cv2.Rodrigues(rvec)
        # PnP maps reference-camera points into the new camera: x_new = R x_ref + t.
        motion = Pose.from_Rt(R, tvec[:, 0]).inv()
        xi = motion.log()
        if not np.all(np.isfinite(xi)) or np.linalg.norm(xi[:3]) > c.max_step_m or np.linalg.norm(xi[3:]) > c.max_step_rad:
            return None
        return OdometryResult(motion, int(len(inl)), int(ok.sum()))
