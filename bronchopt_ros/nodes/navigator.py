"""Navigator node: endoscope images in, scope-tip pose in the CT out.

Subscribes (sensor-data QoS) to the image (raw, or compressed when ``use_compressed``) and
camera_info, gets the airway from the airway server (latched ``/airway/mesh``, or the
``/airway/get_mesh`` service), initialises from ``/initialpose`` (or automatically at the trachea
when ``auto_initialise``) and then, for every processed frame, refines the pose warm-started from
the previous one and publishes ``/bronchopt/pose`` (stamp = the image's), the TF
``ct`` -> ``bronchoscope_optical_frame``, ``/bronchopt/status``, ``/bronchopt/path``, a debug
overlay image and ``/diagnostics``.

Frames never queue up: the callbacks only keep the newest frame; one worker thread processes it.
A frame replaced before it was processed is counted as dropped; frames the video itself lost (gaps
in the images' stamps, :mod:`bronchopt_ros.video_gaps`) are counted apart on ``/diagnostics``
(``video_gaps``, ``video_frames_missing``).
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
from collections import deque

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

from bronchopt_msgs.msg import AirwayMesh, TrackingStatus
from bronchopt_msgs.srv import GetAirwayMesh
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..geometry import Camera, Pose
from ..io import ros_convert as rc
from ..io.image import ImageConversionError, msg_to_rgb8, numpy_to_image
from ..lighting import LightingConfig
from ..pipeline import PipelineConfig, build_tracker, load_default_encoder, prepare_frame
from ..skipped_frames import SkippedFrames
from ..video_gaps import VideoGaps
from ..odometry import OdometryConfig
from ..tracker import Tracker, TrackerConfig, TrackState
from .params import declare, declare_dataclass
from .tf import TfPublisher

CAMERA_INFO_GRACE_S = 0.2  # how long an image waits for the first camera_info before it is dropped
STALE_INITIALPOSE_S = 0.5  # a first frame this much newer than its /initialpose's stamp: warned and counted
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

TRACKER_DOCS = {
    "mode": ("Registration objective: 'depth' (encoder log-depth + Gauss-Newton, ~30-40 frames/s on 2 CPU "
             "cores, default), 'features_gn' (the paper's dense-feature similarity solved by Gauss-Newton, "
             "~5 frames/s, more accurate) or 'features' (paper-faithful: similarity + Adam, ~1.4 frames/s).", None),
    "pyramid": ("Solver image widths in pixels, coarse to fine, when tracking (warm start from the odometry).", None),
    "iterations": ("Iteration cap per pyramid level when tracking.", None),
    "step_tol_m": ("Early stopping when tracking: a solver level ends once an accepted step is shorter than "
                   "this (m) and step_tol_rad.", (0.0, 0.01)),
    "step_tol_rad": ("... and this (rad).", (0.0, 0.1)),
    "init_pyramid": ("Solver image widths when (re)initialising, searching while LOST and in the frame-wise "
                     "protocol (starts further from the answer).", None),
    "init_iterations": ("Iteration cap per level of init_pyramid.", None),
    "feature_width": ("Render width (px) of the feature modes (the depth encoder's input).", (16, 512)),
    "motion_damping": ("Share of the last inter-frame motion predicted forward (0 = none).", (0.0, 1.0)),
    "odometry": ("Predict each frame's pose by visual odometry of the wall's texture from the previous frame, "
                 "lifted to 3D with the CT depth (bronchopt_ros/odometry.py); holds the pose where the CT's depth "
                 "is ambiguous (sliding along / rolling in the trachea).", None),
    "prior_sigma_m": ("Translation sigma (m) of the prior that keeps the registration near the odometry's "
                      "prediction (0: the prediction is only the start).", (0.0, 0.05)),
    "prior_sigma_rad": ("Rotation sigma (rad) of that prior (0: no prior).", (0.0, 1.0)),
    "init_prior_sigma_m": ("A (re)initialisation is held near /initialpose with the sigmas of its covariance, "
                           "at most this translation sigma (m), and with it when the message carries none "
                           "(all zero) (0: the pose is only the start; unheld, the solver often slides to a "
                           "look-alike pose several mm away).", (0.0, 0.1)),
    "init_prior_sigma_rad": ("... and this rotation sigma (rad) (0: no prior).", (0.0, 3.2)),
    "prior_sigma_roll": ("Sigma (rad) of the roll about the optical axis in that prior, which the CT's depth "
                         "barely sees in round bronchi (0: prior_sigma_rad).", (0.0, 1.0)),
    "border_mask": ("Find the video's static black surround (an endoscope's circular or octagonal field), fill it "
                    "for the encoder and leave it out of the registration and the odometry.", None),
    "prior_period_s": ("The camera frame interval (s) those sigmas are for; a slower camera's frames are further "
                       "apart, and the sigmas widen by sqrt(its interval / prior_period_s) (frames this node drops "
                       "do not count; 0: off).", (0.0, 1.0)),
    "max_speed": ("How fast (m/s) the tip can plausibly move: while LOST, relocalisation candidates farther than "
                  "search_radius + max_speed x time since the last trusted frame are refused (0: no bound).",
                  (0.0, 10.0)),
    "max_turn_rate": ("How fast (rad/s) the tip can plausibly turn, roll included: while LOST, a found pose turned "
                      "more than search_turn + max_turn_rate x time since the last trusted frame from the last "
                      "trusted pose is refused (counted: turn_refused in /diagnostics; 0: no bound).", (0.0, 100.0)),
    "search_turn": ("The turn (rad) a found pose may have right after the loss (the estimate's drift before it).",
                    (0.0, 3.2)),
    "lost_prior_sigma_m": ("While LOST, the search's starts around the estimate are held near it with this "
                           "translation sigma (m) and ranked by data + prior cost; the relocaliser's candidates are "
                           "not held (0: unheld; unheld, a search could walk from look-alike to look-alike).",
                           (0.0, 0.1)),
    "lost_prior_sigma_rad": ("... and this rotation sigma (rad) (0: unheld).", (0.0, 3.2)),
    "hypotheses": ("Start hypotheses per frame when tracking (1 = warm start only).", (1, 32)),
    "init_hypotheses": ("Rotated start hypotheses when (re)initialising from /initialpose.", (1, 32)),
    "init_search_radius": ("Centerline starts within this distance (m) of a (re)initialisation pose, held near it "
                           "by its prior (0: none; unheld, a wider search picks look-alike views).", (0.0, 0.1)),
    "search_radius": ("Centerline starts within this distance (m) of the last trusted pose when LOST (0: none).",
                      (0.0, 0.1)),
    "search_spacing": ("Spacing (m) of those centerline starts along each branch.", (0.0005, 0.02)),
    "search_budget": ("Starts tried per LOST frame: the relocaliser's candidates, then the next ones of the wide "
                      "search in turn over the following frames (bounds the latency while LOST; 0: all every frame).",
                      (0, 1000)),
    "recheck_si": ("A TRACKING frame whose scale-invariant log-depth error exceeds this is searched around (the "
                   "LOST search's starts about its own result, held by lost_prior_sigma_*); a result fitting "
                   "clearly better (recheck_gain) and unambiguous (the reloc_ambiguity probes) replaces it: a drift "
                   "caught while still TRACKING (counted: rechecks / recheck_moves in /diagnostics). 0: off.",
                   (0.0, 5.0)),
    "recheck_gain": ("... the search's result replaces the frame's only when its error is below this share of "
                     "the frame's (the search's refined at the tracking width; the frame's at its own solver's "
                     "finest width, the tracking width unless the odometry failed).", (0.0, 1.0)),
    "recheck_every_s": ("... at most one such search per this many seconds (s).", (0.0, 60.0)),
    "si_scale": ("Scale-invariant log-depth error at which the confidence is exp(-1).", (0.01, 5.0)),
    "min_valid_fraction": ("Rendered pixel share below which a pose is not trusted.", (0.0, 1.0)),
    "lost_below": ("Confidence below which a frame counts towards LOST.", (0.0, 1.0)),
    "lost_after": ("Consecutive low-confidence frames before LOST.", (1, 1000)),
    "lost_at_once": ("Confidence below which a frame means LOST at once, without the hysteresis (0: never).",
                     (0.0, 1.0)),
    "recover_above": ("Confidence needed to return to TRACKING (hysteresis).", (0.0, 1.0)),
    "reloc_ambiguity": ("A return to TRACKING from LOST is accepted only when no registration from its pose rolled "
                        "by +-0.3 rad lands elsewhere (> 10 deg or 5 mm) with a scale-invariant error within this "
                        "fraction of its own; else the estimate coasts there, withheld, and is probed again every "
                        "third frame (a plain bronchus barely shows the roll). 0: off.", (0.0, 10.0)),
    "continuity_frames": ("After a blind frame that meant LOST (blind_probe), the estimate coasts on its ambiguous "
                          "result; when every frame since was confident and registered within continuity_sigmas "
                          "prior sigmas of the odometry's prediction (no search result taken), this many in a row "
                          "make the return trusted though still ambiguous (counted: continuity_returns in "
                          "/diagnostics). 0: off.", (0, 100000)),
    "continuity_sigmas": ("... within this many prior sigmas of the odometry's prediction (the innovation).",
                          (0.0, 100.0)),
    "blind_probe": ("While TRACKING, a frame whose visual odometry lost its reference's corners (too long a step, a "
                    "fast turn) is registered blind, from the last estimate without a prior; when the camera may "
                    "have moved out of the solver's reach since (blind_probe_m / _rad), it is trusted only when "
                    "unambiguous (the reloc_ambiguity probes), else LOST at once (counted: blind_lost in "
                    "/diagnostics).", None),
    "blind_probe_m": ("... out of reach: the camera, at its last velocity, moved more than this (m) since the last "
                      "processed frame ...", (0.0, 0.1)),
    "blind_probe_rad": ("... or turned more than this (rad); velocity unknown: a gap over catch_up_gap_s.",
                        (0.0, 3.2)),
    "blind_jump_m": ("A blind frame within reach whose registration still moved more than this (m) from its start "
                     "(where the camera's last velocity takes it, or the last estimate) is registered again held "
                     "near that start, with blind_probe_m / _rad as the sigmas (a look-alike is as likely as the "
                     "truth that far; counted: blind_held in /diagnostics). 0: no bound.", (0.0, 0.1)),
    "blind_jump_rad": ("... or turned more than this (rad). 0: no bound.", (0.0, 3.2)),
    "parallel": ("Run the encoder on a second thread beside the visual odometry (same results; ~15 % faster on "
                 "2 cores; lowers the process's GIL switch interval to 0.2 ms, without which single frames took "
                 "1-2 s under a flood of frames published in-process).", None),
    "pipelined": ("While tracking, a frame's pose (the odometry's prediction from the last registered frame) goes "
                  "out before its registration, which finishes beside the next frame's odometry (needs parallel).",
                  None),
    "registration_wait_s": ("Pipelined: how long (s) a frame's pose may wait for the last frame's registration "
                            "still in flight; not done by then, the frame goes out on the odometry alone, "
                            "unregistered (registration as often as the cores allow).", (0.0, 1.0)),
    "threads": ("torch intra-op threads of the solver.", (1, 64)),
    "catch_up": ("While the odometry knows no velocity (after a (re)initialisation or a failure), or after a gap "
                 "longer than catch_up_gap_s, it first follows the corners through up to this many of the frames "
                 "skipped since the last processed one, evenly spread (0: never).", (0, 8)),
    "catch_up_gap_s": ("... a gap (s) between processed frames beyond which the skipped frames are followed even "
                       "with a known velocity.", (0.0, 10.0)),
    "catch_up_scale": ("... and within it too when the camera, at its last velocity, moves more than this share "
                       "of the odometry reference's median depth over the gap (a fast advance; 0: off).", (0.0, 10.0)),
    "catch_up_step_s": ("... over a long gap (a stall) more of them: as many as keep each step within this (s), "
                        "up to catch_up_max (0: catch_up only).", (0.0, 1.0)),
    "catch_up_max": ("... at most this many; the node keeps this many of the frames it drops, thinned evenly over "
                     "the gap (memory: this many image messages).", (2, 256)),
    "catch_up_register_every": ("... and every this many followed frames one is registered too (encoder + solver, "
                                "~20 ms), its correction folded into the estimate, so the odometry's drift does "
                                "not add up over a stall (0: never).", (0, 1000)),
    "catch_up_time_share": ("... and never more than fit in this share of the gap at the follows' measured cost "
                            "(a catch-up slower than the video it covers would widen the next gap).", (0.05, 1.0)),
    "catch_up_fast_share": ("... this share in a fast advance (catch_up_scale), where a step over a skipped frame "
                            "loses the wall's scaled texture.", (0.05, 1.0)),
    "latency_budget_s": ("Receive-to-pose latency budget (s): when the newest frame has waited so long that it "
                         "would miss it (its wait plus the recent time per frame) and the next frame would not, the "
                         "worker waits for the next one (tracking only; 0: always take the newest at once).",
                         (0.0, 10.0)),
}

LIGHTING_DOCS = {
    "mode": ("The scope light's offset beside the lens, compensated before the encoder: auto (estimated from the "
             "tracked video), fixed (light_offset_mm) or none.", None),
    "light_offset_mm": ("(x, y) mm of the light beside the lens in the camera frame (x right, y down); mode fixed.",
                        None),
    "gamma": ("The camera's encoding gamma (the frame is decoded to linear intensity with it).", (1.0, 3.0)),
    "shrink": ("Share of the estimated offset applied (auto; over-estimates hurt more than under-estimates).",
               (0.0, 1.0)),
    "max_offset_mm": ("The estimate's candidate lights lie within this radius of the lens (mm).", (0.1, 10.0)),
    "grid_mm": ("Spacing of the estimate's candidate grid (mm).", (0.05, 2.0)),
    "min_frames": ("Samples the estimate needs before it is applied.", (1, 100000)),
    "max_frames": ("Samples after which the estimate is kept (no more samples: ~2 ms each, in idle time).", (1, 1000000)),
    "every": ("Confidently tracked frames between two samples of the estimate.", (1, 1000)),
    "width": ("Resolution (px) of a sample: the CT rendered at the frame's pose.", (8, 256)),
    "pixels": ("At most this many of a sample's pixels are used (evenly spread).", (16, 65536)),
    "narrow_mm": ("Only views whose median wall distance is below this (mm) are re-lit and sampled (in wider "
                  "airways the offset barely shows).", (0.5, 100.0)),
}

ODOMETRY_DOCS = {
    "max_corners": ("Corners followed by the visual odometry (Shi-Tomasi, in the reference frame).", (12, 5000)),
    "grid": ("The corners are spread over grid x grid cells of the image, an equal share each (1: anywhere).",
             (1, 20)),
    "quality": ("Corner quality level, relative to the best corner of its cell.", (0.0, 1.0)),
    "min_distance": ("Minimum distance between corners (px at 200 px wide).", (0.0, 50.0)),
    "window": ("Lucas-Kanade window (px at 200 px wide; scales with the image, odd, at least 5).", (3, 101)),
    "levels": ("Lucas-Kanade pyramid levels.", (0, 6)),
    "lk_iterations": ("Lucas-Kanade iterations per level, at most (stopped early it falls short of the motion).",
                      (1, 1000)),
    "lk_epsilon": ("... or until its update is below this (px).", (0.0, 1.0)),
    "fb_max_px": ("A corner whose forward-backward track disagrees by more than this (px) is dropped.", (0.0, 100.0)),
    "zoom_min": ("When the predicted step grows the wall's texture by more than this share (a fast advance, a "
                 "slow camera), the previous frame is zoomed about the focus of expansion before its corners "
                 "are followed (0: off).", (0.0, 1.0)),
    "retry_axial": ("A camera thought still whose frame keeps fewer than retry_below PnP inliers is tried again "
                    "from a step of this share of the median wall distance forward, then backward (0: no "
                    "retry).", (0.0, 1.0)),
    "retry_below": ("... fewer PnP inliers than this (also: a zoomed search keeping fewer is tried unzoomed).",
                    (0, 10000)),
    "slow_camera_s": ("The zoom and the retry act only for a camera whose frame interval is at least this (s): "
                      "at 30 frames/s they cost the deep bronchi's rotation and gain nothing (0: always).",
                      (0.0, 10.0)),
    "gap_step_s": ("... and for any step this long (s), whatever the camera's interval: a gap in the video "
                   "(frames dropped, or skipped and not followed; 10: only the camera's interval counts).",
                   (0.0, 10.0)),
    "ransac_px": ("PnP inlier threshold (px).", (0.1, 20.0)),
    "pnp_prior_px": ("PnP starts from the predicted motion and fits the tracks within this many px of where it "
                     "puts them, then those within ransac_px (0: RANSAC always).", (0.0, 100.0)),
    "pnp_prior_keep": ("... and runs RANSAC too (the fit with more inliers is taken) when the prediction puts "
                       "fewer than this share of the tracks that near.", (0.0, 1.0)),
    "min_inliers": ("Fewer PnP inliers than this: no odometry for the frame (the full solver runs).", (4, 1000)),
    "max_step_m": ("A larger translation between two frames (m) is implausible: the odometry is rejected.",
                   (0.0, 1.0)),
    "max_step_rad": ("... and a larger rotation (rad).", (0.0, 3.2)),
    "keyframe_frames": ("The reference frame's corners are followed for up to this many frames and the motion "
                        "is measured against it (1: frame to frame).", (1, 100)),
    "keyframe_keep": ("... while at least this share of its corners is still followed.", (0.0, 1.0)),
    "keyframe_scale": ("... and while the camera has moved less than this share of the corners' median depth "
                       "(a fast advance scales the texture past the LK windows; 0: off).", (0.0, 1.0)),
    "photometric": ("Refine the odometry's rotation by direct alignment of the reference frame's pixels (lifted "
                    "with the CT depth) to the new frame: Lucas-Kanade under-measures the roll where cartilage "
                    "rings fill its windows.", None),
    "photometric_step": ("px between the reference pixels used (at 200 px wide).", (1.0, 20.0)),
    "photometric_keep": ("... of which this share, with the strongest gradients, is used.", (0.01, 1.0)),
    "photometric_iterations": ("Gauss-Newton iterations of the refinement, at most.", (1, 100)),
    "photometric_huber": ("Grey levels (shading-normalised image) where its loss turns from quadratic to linear.",
                          (0.1, 255.0)),
}


class Navigator(Node):
    def __init__(self, **kwargs):
        super().__init__("navigator", **kwargs)
        p = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.image_topic = p("image_topic", "/bronchoscope/image_raw", "Endoscope image topic (sensor_msgs/Image).")
        self.use_compressed = p("use_compressed", False, "Subscribe to <image_topic>/compressed instead of raw.")
        self.camera_info_topic = p("camera_info_topic", "/bronchoscope/camera_info", "CameraInfo topic.")
        self.initialpose_topic = p("initialpose_topic", "/initialpose", "Initial pose (PoseWithCovarianceStamped).")
        self.pose_topic = p("pose_topic", "/bronchopt/pose", "Output pose topic (PoseStamped, frame ct).")
        self.status_topic = p("status_topic", "/bronchopt/status", "Output TrackingStatus topic.")
        self.path_topic = p("path_topic", "/bronchopt/path", "Output trajectory (nav_msgs/Path).")
        self.debug_topic = p("debug_image_topic", "/bronchopt/debug_image", "Overlay image topic.")
        self.mesh_topic = p("mesh_topic", "/airway/mesh", "Airway mesh topic (latched).")
        self.mesh_service = p("mesh_service", "/airway/get_mesh", "Airway mesh service (fallback).")
        self.ct_frame = p("ct_frame", rc.CT_FRAME, "CT frame id.")
        self.camera_frame = p("camera_frame", rc.CAMERA_FRAME, "Camera (scope tip) frame id.")
        self.publish_tf = p("publish_tf", True, "Publish the TF ct -> camera_frame.")
        self.publish_when_lost = p("publish_when_lost", False,
                                   "Publish pose/TF while LOST (the status says LOST); default: stop publishing.")
        self.auto_initialise = p("auto_initialise", False,
                                 "Initialise at the top of the trachea from the centerline when no /initialpose came.")
        self.debug_every = p("debug_image_every", 5, "Publish the overlay every N processed frames (0 = never).",
                             (0, 1000))
        self.path_max = p("path_max_length", 5000, "Poses kept in the published path.", (10, 1000000))
        self.path_period = p("path_publish_period", 0.5,
                             "Seconds between path messages (a 5000-pose path costs ~15 ms to send; 0: every pose).",
                             (0.0, 60.0))
        self.max_image_size = p("max_image_size", 256, "Longer image side kept for processing (px).", (32, 4096))
        pipe = PipelineConfig()
        self.pipeline = PipelineConfig(
            renderer_backend=p("renderer_backend", pipe.renderer_backend, "Renderer: auto, cpu or nvdiffrast."),
            encoder_backend=p("encoder_backend", pipe.encoder_backend, "Encoder: auto, torch, onnx or tensorrt."),
            encoder_weights=p("encoder_weights", pipe.encoder_weights, "Encoder checkpoint (empty: shipped weights)."),
            encoder_input_size=p("encoder_input_size", pipe.encoder_input_size, "Encoder input side (px).",
                                 (32, 1024)),
            principal_point_tolerance=p("principal_point_tolerance", pipe.principal_point_tolerance,
                                        "A frame whose principal point is further than this share of its size "
                                        "from the centre is padded to centre it for the encoder (negative: never).",
                                        (-1.0, 1.0)),
            max_fov_deg=p("max_fov_deg", pipe.max_fov_deg,
                          "A wider field of view (deg) is cropped about the principal point for the encoder, "
                          "trained at 70-95 deg (0: never).", (0.0, 179.0)),
            device=p("device", pipe.device, "Torch device: cpu or cuda."),
            relocalisation=p("relocalisation", pipe.relocalisation,
                             "Build the centerline view index (global embeddings) to relocalise when lost."),
            relocalisation_cache=p("relocalisation_cache", "~/.cache/bronchopt",
                                   "Directory keeping relocalisation indices (one file per airway and encoder; "
                                   "a build takes ~35 s on 2 cores, loading ms). Empty: rebuild every start."),
            tracker=declare_dataclass(self, "tracker", TrackerConfig(), TRACKER_DOCS),
            odometry=declare_dataclass(self, "odometry", OdometryConfig(), ODOMETRY_DOCS),
            lighting=declare_dataclass(self, "lighting", LightingConfig(), LIGHTING_DOCS))

        # ---- state shared between callbacks (executor thread) and the worker thread
        self._lock = threading.Condition()
        self._frame_msg = None
        self._frame_arrival = 0.0
        # the frames dropped since the worker took one, thinned evenly over the gap (tracker.catch_up)
        self._skipped_msgs = SkippedFrames(max(2, self.pipeline.tracker.catch_up_max))
        self._arrivals: deque = deque(maxlen=16)  # arrival times of the last images (the camera's period)
        self._camera: Camera | None = None
        self._camera_error = ""
        self._mesh_msg = None
        self._mesh_key = None
        self._init_pose: Pose | None = None
        self._images_seen = False
        self._stop = False
        self.tracker = None
        self.encoder = None
        self.counters = dict(processed=0, dropped=0, rejected=0, bad_initialpose=0, stamp_resets=0,
                             waited_for_newer=0, stale_initialpose=0)
        self._video_gaps = VideoGaps()  # frames the video itself lost (its stamps' gaps), not the node
        self._init_stamp: float | None = None  # the stamp of the /initialpose the next frame starts from
        self.lat_proc = deque(maxlen=300)
        self.lat_img = deque(maxlen=300)
        self.proc_times = deque(maxlen=300)
        self.last_result = None
        self.state = TrackState.WAITING_FOR_MESH
        self.message = "waiting for the airway mesh"
        self.path = Path()
        self.path.header.frame_id = self.ct_frame
        self._path_lock = threading.Lock()  # the worker appends, the timer may send
        self._path_sent = -math.inf
        self._path_dirty = False
        self._last_stamp = None
        self._last_log = {}
        self._index_thread = None

        # ---- interfaces
        self.pose_pub = self.create_publisher(PoseStamped, self.pose_topic, 10)
        self.status_pub = self.create_publisher(TrackingStatus, self.status_topic, 10)
        self.path_pub = self.create_publisher(Path, self.path_topic, 1)
        self.debug_pub = self.create_publisher(Image, self.debug_topic, qos_profile_sensor_data)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf = TfPublisher(self)
        if self.use_compressed:
            self._image_sub_topic = self.image_topic + "/compressed"
            self.create_subscription(CompressedImage, self.image_topic + "/compressed", self._on_image,
                                     qos_profile_sensor_data)
        else:
            self._image_sub_topic = self.image_topic
            self.create_subscription(Image, self.image_topic, self._on_image, qos_profile_sensor_data)
        self.create_subscription(CameraInfo, self.camera_info_topic, self._on_camera_info, qos_profile_sensor_data)
        init_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(PoseWithCovarianceStamped, self.initialpose_topic, self._on_initialpose, init_qos)
        self.create_subscription(AirwayMesh, self.mesh_topic, self._on_mesh, LATCHED)
        self.mesh_client = self.create_client(GetAirwayMesh, self.mesh_service)
        self.create_timer(1.0, self._on_timer)
        self._worker = threading.Thread(target=self._run, name="bronchopt-tracker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callbacks (cheap)
    def _throttled(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= period:
            self._last_log[key] = now
            self.get_logger().warning(text)

    def _on_image(self, msg) -> None:
        if not self._images_seen:
            self._images_seen = True
            self.get_logger().info(f"first image received (stamp {rc.stamp_to_sec(msg.header.stamp):.3f} s)")
        missing = self._video_gaps.add(rc.stamp_to_sec(msg.header.stamp))
        if missing:
            self._throttled("video_gaps", f"the video lost {missing} frame(s) before the image stamped "
                            f"{rc.stamp_to_sec(msg.header.stamp):.3f} s (camera or transport; "
                            f"{self._video_gaps.missing} in {self._video_gaps.gaps} gaps so far)")
        with self._lock:
            if self._frame_msg is not None:
                self.counters["dropped"] += 1
                self._skipped_msgs.append(self._frame_msg, rc.stamp_to_sec(self._frame_msg.header.stamp))
            self._frame_msg = msg
            self._frame_arrival = time.monotonic()
            self._arrivals.append(self._frame_arrival)
            self._lock.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            cam = Camera.from_camera_info(msg)
            if not (np.all(np.isfinite(cam.K)) and cam.fx > 0 and cam.fy > 0 and cam.width > 0 and cam.height > 0):
                raise ValueError("K has zero, negative or NaN focal lengths, or the size is zero")
        except (ValueError, TypeError) as exc:
            self._camera_error = str(exc)
            self.counters["rejected"] += 1
            self._throttled("caminfo", f"ignoring camera_info: {exc}")
            return
        with self._lock:
            self._camera = cam
            self._camera_error = ""
            self._lock.notify()  # (a frame may be waiting for it)

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        if msg.header.frame_id and msg.header.frame_id.lstrip("/") != self.ct_frame:
            self.counters["bad_initialpose"] += 1
            self._throttled("initpose", f"ignoring /initialpose in frame '{msg.header.frame_id}' (expected {self.ct_frame})")
            return
        try:
            pose = rc.pose_from_msg(msg)
        except ValueError as exc:
            self.counters["bad_initialpose"] += 1
            self._throttled("initpose", f"ignoring /initialpose: {exc}")
            return
        cov = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        stamp = rc.stamp_to_sec(msg.header.stamp)
        with self._lock:
            self._init_pose = (pose, cov)  # the covariance sets how firmly the registration keeps it
            self._init_stamp = stamp if stamp > 0 else None  # (RViz may send a zero stamp)
            self._lock.notify()
        self.get_logger().info(f"initial pose received at {np.round(pose.t * 1000, 1)} mm (stamp {stamp:.3f} s)")

    def _on_mesh(self, msg: AirwayMesh) -> None:
        key = (len(msg.vertices), len(msg.triangles), msg.source,
               hash(bytes(np.asarray(msg.vertices[:3000], np.float32).tobytes())))
        if key == self._mesh_key:
            return  # the same mesh again (e.g. the server restarted): keep tracking
        with self._lock:
            self._mesh_msg = msg
            self._mesh_key = key
            self._lock.notify()

    def _on_timer(self) -> None:
        self._send_path()  # the last poses, when no frame came since
        if self._mesh_key is None and self.mesh_client.service_is_ready():
            fut = self.mesh_client.call_async(GetAirwayMesh.Request())
            fut.add_done_callback(self._on_mesh_response)
        if self.tracker is None or self.counters["processed"] == 0 or \
                (self.proc_times and time.monotonic() - self.proc_times[-1] > 1.0):
            self._publish_status(None)  # keep the status alive while idle
        self._publish_diagnostics()

    def _on_mesh_response(self, fut) -> None:
        try:
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - the service may vanish mid-call
            self._throttled("meshsrv", f"mesh service call failed: {exc}")
            return
        if res.success:
            self._on_mesh(res.mesh)
        else:
            self._throttled("meshsrv", f"airway server has no mesh: {res.message}")

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while rclpy.ok(context=self.context) and not self._stop:
            with self._lock:
                while not self._stop and self._frame_msg is None and self._mesh_msg is None and self._init_pose is None:
                    self._lock.wait(0.5)
                if self._stop:
                    return
                self._await_fresher_frame()
                mesh_msg, self._mesh_msg = self._mesh_msg, None
                init_pose, self._init_pose = self._init_pose, None
                frame_msg, self._frame_msg = self._frame_msg, None
                arrival = self._frame_arrival
                skipped_msgs = self._skipped_msgs.take() if frame_msg is not None else []
            try:
                if mesh_msg is not None:
                    self._load_mesh(mesh_msg)
                if init_pose is not None and self.tracker is not None:
                    self.tracker.initialise(*init_pose)
                    self._reset_path()
                elif init_pose is not None:
                    self._pending_init = init_pose
                if frame_msg is not None:
                    self._process(frame_msg, arrival, skipped_msgs)
                    with self._lock:
                        idle = self._frame_msg is None
                    if idle and self.tracker is not None:
                        self.tracker.prepare_next()  # (before the next frame comes, off its latency)
                        self._send_path()
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self.counters["rejected"] += 1
                self._throttled("worker", f"frame processing failed: {type(exc).__name__}: {exc}\n"
                                f"{traceback.format_exc(limit=-3)}")

    def _await_fresher_frame(self) -> None:
        """(Worker, holding the lock.) When the waiting frame would miss the latency budget and the
        next one would not (Tracker.wait_for_newer), wait for the next one; it replaces the old one
        (counted as dropped, kept for the catch-up). Gives up after the wait, keeping the old one."""
        first = self._frame_msg
        if first is None or self.tracker is None or self._mesh_msg is not None or self._init_pose is not None:
            return
        period = float(np.median(np.diff(self._arrivals))) if len(self._arrivals) >= 4 else 0.0
        wait = self.tracker.wait_for_newer(time.monotonic() - self._frame_arrival, period)
        if wait <= 0:
            return
        self.counters["waited_for_newer"] += 1
        deadline = time.monotonic() + wait
        while self._frame_msg is first and not self._stop and self._mesh_msg is None and self._init_pose is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(left)

    def _load_mesh(self, msg) -> None:
        self.state = TrackState.WAITING_FOR_MESH
        try:
            airway = rc.airway_from_msg(msg)
        except ValueError as exc:
            self.message = f"airway mesh rejected: {exc}"
            self.get_logger().error(self.message)
            self._mesh_key = None
            return
        if self.encoder is None:
            self.encoder = load_default_encoder(self.pipeline)
        self._stop_index()  # the old mesh's index build, if still running
        if self.tracker is not None:
            self.tracker.close()
        self.tracker = build_tracker(airway, self.pipeline, encoder=self.encoder)
        self.airway = airway
        index = getattr(self.tracker.relocaliser, "index", None)
        if index is not None:  # build the relocalisation index now, beside the tracking
            self._index_thread = threading.Thread(target=_warm_in_background, args=(index, self.get_logger()),
                                                  name="bronchopt-reloc-index", daemon=True)
            self._index_thread.start()
        self.get_logger().info(
            f"airway mesh: {len(airway.faces)} faces; renderer {self.tracker.renderer_backend}, "
            f"encoder {self.tracker.encoder_backend}")
        self.state = TrackState.INITIALISING
        self.message = "waiting for /initialpose"
        pending = getattr(self, "_pending_init", None)
        if pending is not None:
            self.tracker.initialise(*pending)
            self._pending_init = None
        elif self.auto_initialise:
            self._auto_init()

    def _auto_init(self) -> None:
        cl = getattr(self.airway, "centerline", None)
        if cl is None or not len(cl):
            self._throttled("autoinit", "auto_initialise: the mesh has no centerline; waiting for /initialpose")
            return
        pts = cl.root.points
        k = min(len(pts) - 1, max(1, len(pts) // 10))
        pose = Pose.look_at(pts[k], pts[min(len(pts) - 1, k + 10)], up=(0.0, 1.0, 0.0))
        self.tracker.initialise(pose)
        self.get_logger().info("auto-initialised at the top of the trachea")

    def _reset_path(self) -> None:
        with self._path_lock:
            self.path = Path()
            self.path.header.frame_id = self.ct_frame
            self._path_dirty = True

    def _send_path(self, force: bool = False) -> None:
        """Publish the path if it changed and ``path_publish_period`` has passed (or ``force``)."""
        now = time.monotonic()
        with self._path_lock:
            if self._path_dirty and (force or now - self._path_sent >= self.path_period):
                self.path_pub.publish(self.path)
                self._path_dirty = False
                self._path_sent = now

    def _process(self, msg, arrival: float, skipped_msgs=()) -> None:
        if self.tracker is None:
            self.counters["dropped"] += 1
            return
        if self._camera is None:
            # camera_info and the image are sent together but topics are not ordered: the first
            # image often comes just before the first camera_info. Give it a moment.
            with self._lock:
                self._lock.wait_for(lambda: self._camera is not None or self._stop, CAMERA_INFO_GRACE_S)
        if self._camera is None:
            self.state = TrackState.WAITING_FOR_CAMERA_INFO
            self.message = "waiting for camera_info" + (f" ({self._camera_error})" if self._camera_error else "")
            self.counters["dropped"] += 1
            self._publish_status(None)
            return
        stamp = rc.stamp_to_sec(msg.header.stamp)
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.counters["stamp_resets"] += 1
            self.get_logger().warning("image stamps went backwards (bag loop?): resetting the trajectory")
            self._reset_path()  # (the tracker resets its motion model itself)
        self._last_stamp = stamp
        try:
            rgb = msg_to_rgb8(msg)
            frame = prepare_frame(rgb, self._camera, stamp, self.max_image_size)
        except (ImageConversionError, ValueError) as exc:
            self.counters["rejected"] += 1
            self._throttled("image", f"dropping image: {exc}")
            return
        if not self.tracker.initialised:
            self.state = TrackState.INITIALISING
            self.message = "waiting for /initialpose"
            self.counters["dropped"] += 1
            self._publish_status(None)
            return
        skipped = []
        kept = list(skipped_msgs)
        for i in self.tracker.select_skipped([rc.stamp_to_sec(m.header.stamp) for m in kept], stamp):
            old = kept[i]  # converted only when the tracker follows it
            try:
                skipped.append(prepare_frame(msg_to_rgb8(old), self._camera, rc.stamp_to_sec(old.header.stamp),
                                             self.max_image_size))
            except (ImageConversionError, ValueError):
                pass  # a broken one among them is simply not followed
        res = self.tracker.process(frame, skipped, [rc.stamp_to_sec(m.header.stamp) for m in kept])
        self.counters["processed"] += 1
        with self._lock:
            init_stamp, self._init_stamp = self._init_stamp, None
        if init_stamp is not None and stamp - init_stamp > STALE_INITIALPOSE_S:
            # The pose is where the scope was then: it may have moved since (frames lost before
            # this one, or a pose sent late); the registration starts there all the same.
            self.counters["stale_initialpose"] += 1
            self.get_logger().warning(
                f"the first frame after /initialpose is {stamp - init_stamp:.2f} s newer than the pose's stamp: "
                "the scope may have moved since; re-send /initialpose if the pose looks wrong")
        self.state = res.state
        self.message = ""
        trusted = res.state == TrackState.TRACKING or self.publish_when_lost
        ps = None
        if res.pose is not None and trusted:
            ps = rc.pose_stamped(res.pose, msg.header.stamp, self.ct_frame)
            self.pose_pub.publish(ps)
            if self.publish_tf:
                self.tf.send(rc.transform_stamped(res.pose, msg.header.stamp, self.ct_frame, self.camera_frame))
        now = time.monotonic()  # the pose is out: the path and the status follow
        self.lat_proc.append(1e3 * (now - arrival))
        self.lat_img.append(1e3 * (rc.stamp_to_sec(self.get_clock().now().to_msg()) - stamp))
        if ps is not None:
            with self._path_lock:
                self.path.poses.append(ps)
                if len(self.path.poses) > self.path_max:
                    del self.path.poses[: len(self.path.poses) - self.path_max]
                self.path.header.stamp = msg.header.stamp
                self._path_dirty = True
        self.proc_times.append(now)
        self.last_result = res
        self._publish_status(res, msg.header.stamp)
        if self.debug_every and res.pose is not None and self.counters["processed"] % self.debug_every == 0 \
                and self.debug_pub.get_subscription_count() > 0:
            from ..overlay import render_overlay

            img = render_overlay(frame.rgb, self.tracker.renderer, frame.camera, res.pose, state_text=res.state.name)
            self.debug_pub.publish(numpy_to_image(img, "rgb8", header=msg.header, msg_type=Image))

    # ------------------------------------------------------------------ outputs
    def _publish_status(self, res, stamp=None) -> None:
        s = TrackingStatus()
        s.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        s.header.frame_id = self.ct_frame  # (as the message documents: the frame of the pose it describes)
        s.state = int(self.state)
        s.state_name = TrackState(self.state).name
        if res is not None:
            s.similarity = float(res.similarity)
            s.confidence = float(res.confidence)
            s.iterations = int(res.iterations)
        s.processing_latency_ms = float(self.lat_proc[-1]) if self.lat_proc else 0.0
        s.image_to_pose_latency_ms = float(self.lat_img[-1]) if self.lat_img else 0.0
        s.frames_processed = int(self.counters["processed"])
        s.frames_dropped = int(self.counters["dropped"])
        s.frames_rejected = int(self.counters["rejected"] + self.counters["bad_initialpose"])
        s.relocalisations = int(getattr(self.tracker, "relocalisations", 0) or 0)
        s.renderer_backend = str(getattr(self.tracker, "renderer_backend", ""))
        s.encoder_backend = str(getattr(self.tracker, "encoder_backend", ""))
        s.message = self.message
        self.status_pub.publish(s)

    def index_state(self) -> str:
        """The relocalisation index: 'off', 'building' (tracking is slower meanwhile) or 'ready'."""
        index = getattr(getattr(self.tracker, "relocaliser", None), "index", None)
        if index is None:
            return "off"
        return "ready" if index.ready else ("building" if self._index_thread is not None and
                                            self._index_thread.is_alive() else "not built")

    def _lighting_state(self) -> str:
        """The scope light's compensation (bronchopt_ros/lighting.py), for the diagnostics."""
        lighting = getattr(getattr(self.tracker, "predictor", None), "lighting", None)
        return lighting.describe() if lighting is not None else "none"

    def rate_hz(self) -> float:
        if len(self.proc_times) < 2:
            return 0.0
        span = self.proc_times[-1] - self.proc_times[0]
        return (len(self.proc_times) - 1) / span if span > 0 else 0.0

    def _publish_diagnostics(self) -> None:
        d = DiagnosticStatus()
        d.name = "bronchopt: navigator"
        d.hardware_id = "bronchoscope"
        lost = self.state in (TrackState.LOST, TrackState.RELOCALISING)
        waiting = self.state in (TrackState.WAITING_FOR_MESH, TrackState.WAITING_FOR_CAMERA_INFO)
        d.level = DiagnosticStatus.ERROR if lost else (DiagnosticStatus.WARN if waiting else DiagnosticStatus.OK)
        d.message = TrackState(self.state).name + (f": {self.message}" if self.message else "")
        lp = np.array(self.lat_proc) if self.lat_proc else np.zeros(1)
        vals = dict(state=TrackState(self.state).name, relocalisation_index=self.index_state(),
                    rate_hz=f"{self.rate_hz():.1f}",
                    latency_ms_p50=f"{np.percentile(lp, 50):.1f}", latency_ms_p95=f"{np.percentile(lp, 95):.1f}",
                    **{k: str(v) for k, v in (self.tracker.counters() if self.tracker is not None
                                              else dict.fromkeys(Tracker.COUNTERS, 0)).items()},
                    image_publishers=str(self.count_publishers(self._image_sub_topic)),
                    lighting=self._lighting_state(),
                    video_gaps=str(self._video_gaps.gaps), video_frames_missing=str(self._video_gaps.missing),
                    **{k: str(v) for k, v in self.counters.items()})
        d.values = [KeyValue(key=k, value=v) for k, v in vals.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [d]
        self.diag_pub.publish(arr)

    def destroy_node(self):
        self._stop = True
        with self._lock:
            self._lock.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        self._stop_index()
        if self.tracker is not None and not self._worker.is_alive():
            self.tracker.close()
        return super().destroy_node()

    def _stop_index(self) -> None:
        """Cancel and join the background build of the relocalisation index (old mesh / shutdown)."""
        thread = getattr(self, "_index_thread", None)
        if thread is not None and thread.is_alive():
            index = getattr(getattr(self.tracker, "relocaliser", None), "index", None)
            if index is not None:
                index.cancel()
            thread.join(timeout=5.0)
        self._index_thread = None


def _warm_in_background(index, logger) -> None:
    """Load or build the relocalisation index, building at the lowest CPU priority (Linux: per
    thread). A build still slows the tracking meanwhile (its Python share holds the GIL: ~1.5x the
    frame time), hence the on-disk cache and the ``relocalisation_index`` diagnostic."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux / not permitted: build at normal priority
        pass
    built = index.warm()
    if built is not None:
        how = f"loaded from {index.cache}" if index.loaded_from_cache else f"built in {built.build_s:.1f} s" + (
            f", cached in {index.cache}" if index.cache is not None and index.cache.exists() else "")
        logger.info(f"relocalisation index ready: {len(built)} views, {how}")


def main(args=None) -> int:
    from .spin import run_node

    return run_node(Navigator, args)


if __name__ == "__main__":
    sys.exit(main())
