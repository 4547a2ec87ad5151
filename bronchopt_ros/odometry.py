"""Visual odometry anchored on the CT: the tracker's motion prediction.

Registration against the CT is weak where the airway looks the same over a stretch (the trachea
is a tube: sliding along it or rolling about it barely changes the depth), and strong elsewhere.
The wall's texture (cartilage rings, mucosa, vessels) moves through the video exactly along those
weak directions, so the camera's motion is measured from it:

1. corners of a reference (key) frame, spread over the image (:func:`detect_corners`), are lifted
   to 3D with the CT depth seen at its estimate (:meth:`Renderer.depth_at`: metric, no scale drift);
2. they are followed frame to frame by pyramidal Lucas-Kanade with a forward-backward check,
   each search starting where the camera's last velocity (constant, scaled by the time since the
   last processed frame) puts them: a live camera outruns the tracker and frames are skipped, so
   the steps between processed frames vary;
3. PnP (:func:`solve_pnp`: Levenberg-Marquardt from the predicted motion on the tracks near it,
   RANSAC when the prediction explains too few) gives the camera's motion since the reference; a
   new reference is taken every ``keyframe_frames`` frames or when too few corners are left.

The tracker moves the last estimate by the step since the last frame (both measured against the
same reference), starts the registration there and keeps it near (a prior), so the CT corrects
the odometry's drift where it can and the odometry holds the pose where the CT cannot.

    odo = FrameOdometry(OdometryConfig())
    res = odo.track(gray, camera, stamp)       # motion since the reference frame, or None
    odo.update(gray, camera, pose, renderer)   # after the frame (at its estimate): keep or renew the reference
    odo.follow(gray, camera, stamp)            # a skipped frame: corners followed, no registration
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import Camera, Pose
from .photometric import PhotometricReference, refine_rotation

__all__ = ["OdometryConfig", "OdometryResult", "FrameOdometry", "detect_corners", "solve_pnp", "to_gray"]


@dataclass
class OdometryConfig:
    """Settings of :class:`FrameOdometry`; every field is a node parameter ``odometry.<name>``
    (config/navigator.yaml). Sizes on the wall - ``min_distance``, ``window``, ``photometric_step``
    and :func:`to_gray`'s blurs - are given at 200 px wide and scale with the image; the
    tolerances ``fb_max_px``, ``ransac_px`` and ``pnp_prior_px`` are in the image's own pixels
    (Lucas-Kanade's sub-pixel precision does not grow with the pixels)."""

    max_corners: int = 400  # corners detected in the reference frame
    grid: int = 5  # ... spread over grid x grid cells (an equal share each), so the wall's texture at the
    # edge, not just the high-contrast far rings in the centre, is followed: the rings are circles and
    # cannot show a roll (validation: roll rate correlation with the truth 0.67 -> 0.87 on a tube view)
    quality: float = 0.01  # goodFeaturesToTrack quality level (relative to the best corner of the cell)
    min_distance: float = 3.0  # px between corners (at 200 px)
    # Lucas-Kanade window (px at 200 px: 7 at 96 px). A window fixed in pixels spans more of a
    # smaller image, where a forward step's flow is no longer a translation within it: at 96 px a
    # 15 px window lagged the advance (a 0.9 mm step measured 0.3 mm along the view) and the
    # estimate drifted 10 mm in 20 frames; scaled, 1.0 mm (docs/performance-notes.md, session 29).
    window: int = 15
    levels: int = 2  # Lucas-Kanade pyramid levels
    # Lucas-Kanade stops after this many iterations per level or an update below lk_epsilon px.
    # Stopped early it stays short of the motion (roll slope 0.94 on a tube view at 20 / 0.03),
    # a bias that adds up over a procedure (validation at the camera's rate: 1.55 mm / 0.099 rad at
    # 20 / 0.03, 1.47 / 0.084 at 50 / 0.001; the same criteria for the backward check - looser
    # there: 2.02 / 0.085).
    lk_iterations: int = 50
    lk_epsilon: float = 0.001
    fb_max_px: float = 0.5  # forward-backward disagreement above this: the track is dropped
    # Lucas-Kanade's windows translate; a step toward the wall grows the texture between frames
    # (2 mm at a 10 mm median wall distance: ~25 %), and they no longer follow it (test anatomy
    # 3203 filmed at 15 frames/s, a 1.93 mm step: started from the true motion only 110 of 400
    # corners land within 1 px, 7 of them pass the forward-backward check; PnP then fits 18
    # inliers to a motion 0.96 mm backwards). When the predicted step (the last velocity, or a
    # retry's below) grows the reference's median depth's texture by more than zoom_min, the
    # previous frame is zoomed by that scale about the focus of expansion first, and the
    # corners are followed from there (the same frame: 36 inliers, 1.87 mm of the 1.93). 0: off.
    # It trusts the constant-velocity prediction: when the zoomed search keeps fewer than
    # retry_below inliers the unzoomed one is tried too (the camera may have slowed or stopped).
    zoom_min: float = 0.05
    # A camera thought still (a predicted step under zoom_min of the median depth, or none) whose
    # frame keeps fewer than retry_below PnP inliers (or none) is tried again from a step of
    # retry_axial x the median depth forward, then backward, along the view; the fit with the most
    # inliers is kept: a sudden advance from rest. 0: no retry.
    retry_axial: float = 0.15
    # The zoom and the retry act only for a camera whose frame interval (the tracker's: the
    # shortest over the last 30 frames it saw, frames it dropped included) is at least this (s; 0:
    # always; unknown: never). At 30 frames/s the steps are short and they only cost: ten validation
    # procedures, three jittered repeats, paired: generations 5+ +0.018 +- 0.004 rad, the rest
    # within the spread. At 15 frames/s (bench/bench_framerate.py, test anatomies 3201-3206)
    # 3.59 mm / 0.130 rad / 84.6 % -> 1.41 / 0.088 / 92.1 % (3203 14.6 -> 1.35 mm); validation
    # anatomies 2530-2535 3.53 / 0.174 / 63.2 % -> 1.95 / 0.151 / 85.1 % (session 29; without the
    # unzoomed fallback 1.40 / 0.091 / 89.5 % and 2.02 / 0.132 / 87.9 %).
    slow_camera_s: float = 0.05
    # ... and for a step this long (s) whatever the camera's interval: a gap in the video (frames it
    # dropped, or the tracker skipped and did not follow). Session 34, the 29 validation procedures
    # with their video dropping 1-4 frames every 0.7-1.5 s (every frame left registered): without
    # it the step after a gap of 4 frames often lost its corners; the blind registration was
    # right but ambiguous (a round bronchus' roll), so LOST, and the returns withheld: 432 frames
    # not TRACKING at a right pose (longest stretch 8.5 s, in the trachea), 792 wrong while
    # TRACKING, 0.085 rad / 92.7 %. At 0.09: 203 frames, longest 3.0 s, 636 wrong, 0.081 / 94.3 %
    # (bench/bench_drops.py, results/drops.json; 0.05: 206 frames and 710 wrong, 0.12: 175 and
    # 697). Without gaps nothing changes (the same poses); replayed at
    # 15 processed frames/s (ten of them) neither, at 8 wrong while TRACKING 120 -> 70, success
    # 77.9 -> 84.2 %. 10 (or more): only the camera's interval counts.
    gap_step_s: float = 0.09
    retry_below: int = 25  # (also: a zoomed search keeping fewer inliers is tried unzoomed)
    ransac_px: float = 1.0  # PnP inlier threshold (px)
    min_inliers: int = 12  # fewer inliers: no odometry for this frame
    # PnP starts from the predicted motion (the last velocity, else the last motion): the tracks
    # within pnp_prior_px of where it puts them are fitted (Levenberg-Marquardt), then those within
    # ransac_px, twice. Only when the prediction puts fewer than pnp_prior_keep of the tracks that
    # near (a poor prediction: no velocity yet, a sudden turn), or the fit keeps fewer than
    # min_inliers, does RANSAC run too (EPnP on 5-point samples, 100 at most), and the fit with
    # more inliers is taken. Session 22, 2336 PnP problems captured from four procedures, the
    # motion against the true one: RANSAC 0.057-0.141 mm / 0.005-0.008 rad mean, 3-5.5 ms; from
    # the prediction 0.046-0.106 mm / 0.004-0.006 rad, ~1 ms, RANSAC run on 13 of them (RANSAC's
    # 1 px consensus over 5-point samples picks a noisier set than the prediction's). In a fast
    # advance only 15-30 % of the tracks are within 1 px but 60-80 % within 4: a rule on the 1 px
    # share ran RANSAC there on most frames, to no gain. 0: RANSAC always.
    pnp_prior_px: float = 4.0
    pnp_prior_keep: float = 0.5
    max_step_m: float = 0.005  # a larger motion between two frames is implausible: rejected
    max_step_rad: float = 0.3
    # The reference frame's corners are followed for up to this many frames (1: frame to frame)
    # and the motion is measured against it; the corners are found and lifted to 3D only on a new
    # reference (validation: 1.44 mm at 3 frames against 1.48 mm at 1, ~8 % faster; 1.47 at 6).
    keyframe_frames: int = 3
    keyframe_keep: float = 0.5  # ... while at least this share of its corners is still followed
    # ... and while the camera has moved less than this share of the reference's corners' median
    # depth: a fast advance scales the wall's texture beyond what Lucas-Kanade's windows follow.
    # Session 11: the demo procedure ends in an advance of ~1 mm a frame; node runs that took every
    # second frame there lost 5-18 mm (15 of ~90 runs over two sessions). Replayed offline (every
    # frame registered), three such runs: 0.07 kept two (1.65 -> 1.21 mm, 2.10 -> 1.43), 0.05 all
    # three, 0.1 none; on the test procedures (every frame) 0.07 1.16 mm / 0.044 rad, 0.05 1.18 /
    # 0.051 (renewing often shortens the roll's baseline), off 1.16 / 0.043; validation 1.44 /
    # 0.068 / 96.0 % at 0.07, 1.35 / 0.066 / 95.2 % off. 0: off.
    keyframe_scale: float = 0.07
    # After PnP the rotation is refined by direct alignment of the reference frame's pixels
    # (bronchopt_ros.photometric): LK under-measures the roll where cartilage rings fill its windows
    # (validation, six procedures: 1.41 mm / 0.091 rad / 89 % within 5 mm and 10 deg without it,
    # 1.41 / 0.065 / 96.7 % with it; test tracking 1.22 / 0.057 -> 1.19-1.21 / 0.043-0.045; the
    # demo procedure, with a lens bubble, 1.35 / 0.110 -> 1.22 / 0.095). The odometry
    # takes ~4 ms more a frame (8 -> 12.5 ms), still less than the encoder beside it.
    photometric: bool = True
    photometric_step: float = 2.0  # px between the reference's pixels (at 200 px)
    photometric_keep: float = 0.5  # ... of which this share with the strongest gradient is used
    photometric_iterations: int = 10  # Gauss-Newton iterations, at most (it stops on an update < 1e-4 rad)
    photometric_huber: float = 8.0  # grey levels (of the shading-normalised image) where the loss turns linear


@dataclass
class OdometryResult:
    motion: Pose  # the new camera in the reference camera's frame (pose_now = reference @ motion)
    inliers: int
    tracked: int
    reference: Pose  # the pose the reference (key) frame was given
    age: int  # frames between the reference and this one, minus one (0: the reference is the last frame)


def lk_window(window_at_200: int, width: int) -> int:
    """The Lucas-Kanade window (odd, at least 5 px) for an image ``width`` px wide that covers what
    ``window_at_200`` px covers at 200 px."""
    return max(5, 2 * int(round((window_at_200 * width / 200.0 - 1) / 2)) + 1)


def to_gray(rgb: np.ndarray, shading_sigma: float = 4.0, noise_sigma: float = 1.0) -> np.ndarray:
    """The frame's texture as 8-bit grey: luminance divided by its blur (Gaussian, ``shading_sigma``
    px at 200 px wide), so the scope's own light falloff, which moves with the camera, is removed
    and what the tracker follows is fixed to the wall (0 = plain luminance). The luminance is first
    smoothed by ``noise_sigma`` px (at 200 px wide, and never under that many of the image's own
    pixels: the noise is per pixel, and a smaller sensor's is no finer): the sensor's noise, new in
    every frame, otherwise makes corners in the dark lumen that follow nothing. (Scaled down with the
    image, 0.48 px at 96 px, it left the noise in: on a procedure filmed at 96 px the estimate
    drifted 12 mm; at 1 px, 1.1 mm - docs/performance-notes.md, session 29.)"""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = max(g.shape) / 200.0
    f = g.astype(np.float32)
    if noise_sigma > 0:
        f = cv2.GaussianBlur(f, (0, 0), noise_sigma * max(scale, 1.0))
    if shading_sigma <= 0:
        return np.clip(f + 0.5, 0, 255).astype(np.uint8)
    ratio = f / (cv2.GaussianBlur(f, (0, 0), shading_sigma * scale) + 4.0)
    return np.clip(128.0 * ratio, 0, 255).astype(np.uint8)


def detect_corners(gray: np.ndarray, n: int, grid: int, quality: float, min_distance: float) -> np.ndarray | None:
    """Up to ``n`` Shi-Tomasi corners (N, 1, 2), an equal share from each of ``grid`` x ``grid`` cells."""
    if grid <= 1:
        return cv2.goodFeaturesToTrack(gray, n, quality, min_distance)
    H, W = gray.shape
    per = max(1, n // (grid * grid))
    out = []
    for i in range(grid):
        y0, y1 = i * H // grid, (i + 1) * H // grid
        for j in range(grid):
            x0, x1 = j * W // grid, (j + 1) * W // grid
            p = cv2.goodFeaturesToTrack(np.ascontiguousarray(gray[y0:y1, x0:x1]), per, quality, min_distance)
            if p is not None:
                out.append(p.reshape(-1, 2) + np.array([x0, y0], np.float32))
    return np.concatenate(out).reshape(-1, 1, 2) if out else None


class FrameOdometry:
    """The camera's motion since a reference frame, from corners of that frame followed through
    the video (see the module docstring); one per procedure, reset on re-initialisation."""

    def __init__(self, config: OdometryConfig | None = None):
        self.config = config or OdometryConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new procedure, a re-initialisation, time going backwards)."""
        self._clear_reference()
        self._velocity: np.ndarray | None = None  # (6,) the last step's log per second (v, w)
        self._stamp: float | None = None  # the last processed frame's time
        # The camera's frame interval (s; None: unknown), set by its user (the tracker) for the
        # zoom's and the retry's slow_camera_s.
        self.camera_interval_s: float | None = None
        self._step_s: float | None = None  # the step being tracked: its time since the last frame (s)
        # The picture within the video's black surround (H, W bool; None: the whole frame), set by
        # its user: the reference's corners and pixels are taken a Lucas-Kanade window inside it.
        self.valid_mask: np.ndarray | None = None
        self._inner: tuple[np.ndarray, np.ndarray] | None = None  # (the mask, it eroded)

    def _clear_reference(self) -> None:
        self._gray: np.ndarray | None = None  # the reference (key) frame (None: no reference)
        self._uv: np.ndarray | None = None  # (N, 1, 2) float32 corners of the reference frame
        self._xyz: np.ndarray | None = None  # (N, 3) their points in the reference camera (metres)
        self._guess: np.ndarray | None = None  # (N, 1, 2) where they were last seen
        self._alive: np.ndarray | None = None  # (N,) still followed
        self._prev: np.ndarray | None = None  # the last frame (the corners are followed from it)
        self._pose: Pose | None = None  # the pose the reference frame was given
        self._age = 0  # frames tracked against the reference
        self._last: OdometryResult | None = None  # the last frame's result (None: failed or none yet)
        self._corners = 0  # corners the reference started with
        self._depth = 0.0  # their median depth (m)
        self._photo: PhotometricReference | None = None  # its pixels for the rotation's direct refinement

    def keyframe(self, gray: np.ndarray, camera: Camera, pose: Pose, renderer, stamp: float | None = None) -> int:
        """Make ``gray`` (seen by ``camera`` at ``pose``, at time ``stamp``) the reference; returns
        the usable corners."""
        c = self.config
        scale = max(camera.width, camera.height) / 200.0
        uv = detect_corners(gray, c.max_corners, c.grid, c.quality, c.min_distance * scale)
        self._clear_reference()  # (the velocity is the camera's: kept)
        if stamp is not None:  # the next frame's step is timed from this one
            self._stamp = stamp
        inner = self._inner_mask(gray.shape, camera)
        if uv is not None and inner is not None:
            px = np.clip(np.round(uv.reshape(-1, 2)).astype(int), 0, [gray.shape[1] - 1, gray.shape[0] - 1])
            uv = uv[inner[px[:, 1], px[:, 0]]]
        if uv is None or len(uv) < c.min_inliers:
            return 0
        uv = uv.reshape(-1, 2).astype(np.float64)
        z = renderer.depth_at(camera, pose, uv)
        ok = z > 0
        if int(ok.sum()) < c.min_inliers:
            return 0
        uv, z = uv[ok], z[ok]
        self._xyz = camera.unproject(uv, z)
        self._depth = float(np.median(z))
        self._uv = uv.astype(np.float32).reshape(-1, 1, 2)
        self._guess = self._uv.copy()
        self._gray, self._prev, self._pose, self._corners = gray, gray, pose, len(uv)
        self._alive = np.ones(len(uv), bool)
        if c.photometric:
            self._photo = PhotometricReference.from_frame(gray, camera, pose, renderer, c.photometric_step,
                                                          c.photometric_keep, mask=inner)
        return len(uv)

    def _inner_mask(self, shape: tuple[int, int], camera: Camera) -> np.ndarray | None:
        """``valid_mask`` eroded by a Lucas-Kanade window (None: no mask, or not this image's)."""
        m = self.valid_mask
        if m is None or m.shape != tuple(shape):
            return None
        if self._inner is None or self._inner[0] is not m:
            r = lk_window(self.config.window, max(camera.width, camera.height)) // 2 + 2
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            self._inner = (m, cv2.erode(m.astype(np.uint8), kernel).astype(bool))
        return self._inner[1]

    def due(self) -> bool:
        """Whether the reference should be renewed: none, the last frame failed, it is
        ``keyframe_frames`` old or fewer than ``keyframe_keep`` of its corners are followed."""
        c, last = self.config, self._last
        return (self._gray is None or last is None or self._age >= c.keyframe_frames
                or last.tracked < c.keyframe_keep * self._corners
                or (c.keyframe_scale > 0 and np.linalg.norm(last.motion.t) > c.keyframe_scale * self._depth))

    @property
    def last(self) -> OdometryResult | None:
        """The last frame's result (None: it failed, or none since the reference)."""
        return self._last

    def update(self, gray: np.ndarray, camera: Camera, pose: Pose, renderer, stamp: float | None = None) -> bool:
        """After a frame (``gray`` at its estimate ``pose``): keep the reference while it is young
        and still well tracked, else make this frame the new one. Returns True on a new reference."""
        if self.due():
            self.keyframe(gray, camera, pose, renderer, stamp)
            return True
        return False

    def track(self, gray: np.ndarray, camera: Camera, stamp: float | None = None) -> OdometryResult | None:
        """The camera's motion from the reference frame to ``gray`` (None when it cannot be trusted).
        ``stamp`` (seconds): the frame's time, for the constant-velocity start of the search."""
        dt = stamp - self._stamp if stamp is not None and self._stamp is not None else None
        self._step_s = dt
        since = self._last.motion if self._age > 0 and self._last is not None else Pose.identity()
        step = self._predicted_step(dt)
        fit = self._track(gray, camera, since, step)
        c = self.config
        if step is not None and self._zoom(step, camera) is not None and (fit is None or fit[0].inliers < c.retry_below):
            # The prediction zoomed the previous frame and few corners followed: the prediction may
            # be wrong (the camera slowed, or stopped); the unzoomed search, if it keeps more, wins.
            plain = self._track(gray, camera, since, step, zoom=False)
            if plain is not None and (fit is None or plain[0].inliers > fit[0].inliers):
                fit = plain
        still = step is None or abs(step.t[2]) < c.zoom_min * self._depth
        if (c.retry_axial > 0 and self._slow() and self._depth > 0 and still
                and (fit is None or fit[0].inliers < c.retry_below)):
            for sign in (1.0, -1.0):  # (a sudden advance, or retreat, from rest: see OdometryConfig)
                axial = Pose.from_Rt(np.eye(3), [0.0, 0.0, sign * c.retry_axial * self._depth])
                again = self._track(gray, camera, since, axial if step is None else step @ axial)
                if again is not None and (fit is None or again[0].inliers > fit[0].inliers):
                    fit = again
        res = None
        if fit is not None:
            res, ok, p1 = fit
            # Points that stay with the reference: their new positions start the next frame's search.
            self._guess[ok] = p1
            self._alive = ok
            self._prev = gray
        if res is None:
            self._velocity = None
        elif dt is not None and dt > 0:
            self._velocity = (since.inv() @ res.motion).log() / dt
        self._last = res
        self._stamp = stamp
        self._age += 1
        return res

    def expected_scale(self, dt: float) -> float:
        """How far the camera moves in ``dt`` s at its last velocity, as a share of the reference's
        median depth (0 when unknown): how much the wall's texture will grow or shift."""
        motion = self.expected_motion(dt)
        if motion is None or self._depth <= 0:
            return 0.0
        return motion[0] / self._depth

    def expected_motion(self, dt: float) -> tuple[float, float] | None:
        """How far (m) and how much (rad) the camera moves in ``dt`` s at its last velocity (None:
        unknown)."""
        if self._velocity is None:
            return None
        return float(np.linalg.norm(self._velocity[:3]) * dt), float(np.linalg.norm(self._velocity[3:]) * dt)

    def extrapolate(self, stamp: float) -> Pose | None:
        """The camera at ``stamp`` relative to the last tracked frame (or the reference, when none
        was tracked since it), at the last velocity (None: unknown)."""
        dt = stamp - self._stamp if self._stamp is not None else None
        return self._predicted_step(dt)

    @property
    def has_reference(self) -> bool:
        """Whether a reference frame with corners is held (a textureless view gives none)."""
        return self._gray is not None

    @property
    def has_velocity(self) -> bool:
        """Whether the next search can start from the camera's last velocity."""
        return self._velocity is not None

    def follow(self, gray: np.ndarray, camera: Camera, stamp: float | None = None) -> bool:
        """Follow the corners through a frame that is not registered (one the tracker skipped), so
        the next step is short and a velocity is known. On failure nothing changes (False)."""
        if self._gray is None:
            return False
        keep = (self._last, self._age, self._velocity, self._stamp)
        if self.track(gray, camera, stamp) is None:
            self._last, self._age, self._velocity, self._stamp = keep
            return False
        return True

    def _predicted_step(self, dt: float | None) -> Pose | None:
        """The camera's motion since the last frame at constant velocity, or None (no velocity)."""
        if self._velocity is None or dt is None or not 0 < dt < 1.0:
            return None
        return Pose.exp(self._velocity * dt)

    def _track(self, gray: np.ndarray, camera: Camera, since: Pose, step: Pose | None,
               zoom: bool = True) -> OdometryResult | None:
        c = self.config
        if self._gray is None or self._gray.shape != gray.shape:
            return None
        # The reference's corners are followed frame to frame (from where the last frame saw them),
        # with a forward-backward check on each step. The search starts where the predicted motion
        # puts them (the backward search where the same prediction, reversed, does).
        win = lk_window(c.window, max(camera.width, camera.height))
        lk = dict(winSize=(win, win), maxLevel=c.levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, c.lk_iterations, c.lk_epsilon))
        alive = self._alive
        p0 = self._guess[alive]
        guess = motion_guess = None
        if step is not None:
            motion_guess = since @ step
            guess = self._project(motion_guess, camera, alive, p0)
        prev, p0_lk = self._prev, p0
        zoom = self._zoom(step, camera) if step is not None and zoom else None
        if zoom is not None:  # (the texture grows between the frames: follow it from the zoomed previous one)
            prev = cv2.warpAffine(self._prev, zoom, (gray.shape[1], gray.shape[0]), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            p0_lk = (p0.reshape(-1, 2) @ zoom[:, :2].T + zoom[:, 2]).astype(np.float32).reshape(-1, 1, 2)
        if guess is None:
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, gray, p0_lk, None, **lk)
        else:
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, gray, p0_lk, guess.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                                  **lk)
        if p1 is None:
            return None
        if guess is None:
            p0b, st2, _ = cv2.calcOpticalFlowPyrLK(gray, prev, p1, None, **lk)
        else:
            back = (p1 - (guess - p0_lk)).astype(np.float32)
            p0b, st2, _ = cv2.calcOpticalFlowPyrLK(gray, prev, p1, back, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                                   **lk)
        fb = np.linalg.norm((p0b - p0_lk).reshape(-1, 2), axis=1)
        good = (st1[:, 0] == 1) & (st2[:, 0] == 1) & (fb < c.fb_max_px)
        inner = self._inner_mask(gray.shape, camera)
        if inner is not None:  # (a corner followed out into the video's filled surround follows nothing)
            px = np.clip(np.round(p1.reshape(-1, 2)).astype(int), 0, [gray.shape[1] - 1, gray.shape[0] - 1])
            good &= inner[px[:, 1], px[:, 0]]
        ok = alive.copy()
        ok[alive] = good
        if int(ok.sum()) < c.min_inliers:
            return None
        p1 = p1[good]
        obj = self._xyz[ok]
        img = p1.reshape(-1, 2).astype(np.float64)
        K = camera.K
        rvec, tvec = np.zeros((3, 1)), np.zeros((3, 1))
        start = motion_guess if motion_guess is not None else (since if self._age > 0 else None)
        if start is not None:  # PnP starts from the predicted motion (or the last one)
            m = start.inv()
            rvec, tvec = cv2.Rodrigues(m.R)[0], m.t.reshape(3, 1).copy()
        fit = solve_pnp(obj, img, K, rvec, tvec, c)
        if fit is None:
            return None
        rvec, tvec, inl = fit
        R, _ = cv2.Rodrigues(rvec)
        # PnP maps reference-camera points into the new camera: x_new = R x_ref + t.
        motion = Pose.from_Rt(R, tvec[:, 0]).inv()
        if self._photo is not None:
            motion = refine_rotation(self._photo, gray, camera, motion, c.photometric_iterations, c.photometric_huber)
        xi = motion.log()
        steps = self._age + 1
        if (not np.all(np.isfinite(xi)) or np.linalg.norm(xi[:3]) > c.max_step_m * steps
                or np.linalg.norm(xi[3:]) > c.max_step_rad * steps):
            return None
        return OdometryResult(motion, int(len(inl)), int(ok.sum()), self._pose, self._age), ok, p1

    def _slow(self) -> bool:
        """Whether the zoom and the retry act on this step: the camera's frame interval is at least
        ``slow_camera_s``, or the step spans a gap in the video of ``gap_step_s`` or more (frames
        the video dropped, or the tracker skipped and did not follow)."""
        c = self.config
        if c.slow_camera_s <= 0:
            return True
        gap = self._step_s is not None and self._step_s >= c.gap_step_s
        return gap or (self.camera_interval_s is not None and self.camera_interval_s >= c.slow_camera_s)

    def _zoom(self, step: Pose, camera: Camera) -> np.ndarray | None:
        """(2, 3) affine zoom of the previous frame about the focus of expansion by the scale a
        ``step`` toward the wall gives the reference's median depth, or None when that is under
        ``zoom_min`` (see :class:`OdometryConfig`)."""
        c, z, dz = self.config, self._depth, float(step.t[2])
        if c.zoom_min <= 0 or z <= 0 or dz <= 1e-6 or not self._slow():
            return None
        s = z / max(z - dz, 0.2 * z)  # (at most 5x)
        if s - 1.0 <= c.zoom_min:
            return None
        foe = np.clip([camera.fx * step.t[0] / dz + camera.cx, camera.fy * step.t[1] / dz + camera.cy],
                      0, [camera.width - 1, camera.height - 1])
        return np.array([[s, 0.0, (1 - s) * foe[0]], [0.0, s, (1 - s) * foe[1]]])

    def _project(self, motion: Pose, camera: Camera, alive: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """(M, 1, 2) float32 pixels of the followed reference points after ``motion`` (the new
        camera in the reference's frame); points that would fall behind it keep ``fallback``."""
        m = motion.inv()
        x = self._xyz[alive] @ m.R.T + m.t
        out = fallback.reshape(-1, 2).astype(np.float64).copy()
        front = x[:, 2] > 1e-4
        out[front, 0] = camera.fx * x[front, 0] / x[front, 2] + camera.cx
        out[front, 1] = camera.fy * x[front, 1] / x[front, 2] + camera.cy
        return out.astype(np.float32).reshape(-1, 1, 2)


def solve_pnp(obj: np.ndarray, img: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
              config: OdometryConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pose (rvec, tvec: ``obj`` points into the camera that sees them at ``img``) and its
    inlier indices, fitted from the predicted pose (rvec, tvec); when the prediction puts fewer
    than ``pnp_prior_keep`` of the points within ``pnp_prior_px``, the better of that and
    RANSAC's. None when neither keeps ``min_inliers`` (see :class:`OdometryConfig`)."""
    c = config
    fit, near = None, 0.0
    if c.pnp_prior_px > 0:
        close = _reprojection_px(obj, img, K, rvec, tvec) < c.pnp_prior_px
        near = float(close.mean())
        fit = _pnp_from_prior(obj, img, K, rvec, tvec, np.flatnonzero(close), c.ransac_px, c.min_inliers)
    if fit is None or near < c.pnp_prior_keep:
        consensus = _pnp_ransac(obj, img, K, rvec, tvec, c.ransac_px, c.min_inliers)
        if consensus is not None and (fit is None or len(consensus[2]) > len(fit[2])):
            fit = consensus
    return fit


def _reprojection_px(obj: np.ndarray, img: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """(N,) pixel distance between ``img`` and the points ``obj`` seen through (rvec, tvec)."""
    uv, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
    return np.linalg.norm(uv.reshape(-1, 2) - img, axis=1)


def _pnp_from_prior(obj, img, K, rvec, tvec, inl: np.ndarray, inlier_px: float, min_inliers: int):
    """PnP from a predicted pose (rvec, tvec: reference points into the new camera): the points
    ``inl`` (those near their prediction) fitted by Levenberg-Marquardt, then twice those within
    ``inlier_px``. (rvec, tvec, inlier indices), or None when fewer than ``min_inliers`` remain."""
    for k in range(3):
        if k > 0:
            inl = np.flatnonzero(_reprojection_px(obj, img, K, rvec, tvec) < inlier_px)
        if len(inl) < min_inliers:
            return None
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec.copy(), tvec.copy())
    return rvec, tvec, inl


def _pnp_ransac(obj, img, K, rvec, tvec, inlier_px: float, min_inliers: int):
    """PnP by RANSAC (:func:`cv2.solvePnPRansac`) then Levenberg-Marquardt on its inliers:
    (rvec, tvec, inlier indices), or None when it finds fewer than ``min_inliers``."""
    found, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, K, None, rvec.copy(), tvec.copy(), useExtrinsicGuess=True,
                                                iterationsCount=100, reprojectionError=inlier_px,
                                                flags=cv2.SOLVEPNP_ITERATIVE)
    if not found or inl is None or len(inl) < min_inliers:
        return None
    inl = inl[:, 0]
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec, tvec)
    return rvec, tvec, inl
