"""The depth the camera truly saw, as the tracker's depth predictor: a perfect encoder.

On a simulated case this bounds what any encoder can give the same tracker. Each frame's target
is the depth at the frame's true pose (``truth.tum``) of

* ``"ct"``: the undeformed CT mesh, the very surface the registration renders. No encoder error
  and no anatomy motion: what is left is the solver's own error.
* ``"body"``: the anatomy the camera saw, with the case's breathing and CT-to-body divergence
  (``case.json``). This is a perfect depth estimator. The rigid registration against the CT is
  then left with the non-rigid motion alone, since the ground truth is the pose in the undeformed
  CT (:mod:`bronchopt_ros.sim.breathing`).
* ``"breathing"`` / ``"divergence"``: the body with only the breathing, or only the static
  divergence.

    predictor = TruthDepth(case_dir, "body")
    records, *_ = evaluation.track_case(case_dir, cfg, predictor=predictor)

``bench/bench_floor.py`` runs the tracker and the frame-wise protocol with each kind beside the
encoder.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..airway.mesh import Airway
from ..evaluation import load_case_airway, pose_at_stamp, truth_by_stamp
from ..registration import DepthTarget
from .breathing import BreathingParams
from .case import params_from_json
from .views import Scene

__all__ = ["TruthDepth", "KINDS"]

KINDS = ("ct", "body", "breathing", "divergence")


def _case_breathing(info: dict, kind: str) -> BreathingParams | None:
    """The case's breathing parameters cut down to what ``kind`` keeps (None: a static body)."""
    if kind == "ct" or not info.get("breathing"):
        return None
    b = params_from_json(BreathingParams, info["breathing"])
    if kind == "breathing":
        return replace(b, divergence=0.0, static_rotation=0.0, static_shift=0.0)
    if kind == "divergence":
        return replace(b, amplitude=0.0)
    return b


class TruthDepth:
    """:class:`~bronchopt_ros.tracker.DepthPredictor` giving the true depth of a simulated case's frames.

    ``width``: the target's resolution in pixels (the encoder's depth is 64 px).
    """

    def __init__(self, case: str | Path, kind: str = "body", width: int = 64, airway: Airway | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        case = Path(case)
        if not (case / "truth.tum").exists():
            raise FileNotFoundError(f"{case}: no truth.tum (the true depth needs the true poses)")
        if kind != "ct" and not (case / "case.json").exists():
            raise FileNotFoundError(f"{case}: no case.json (the {kind!r} depth needs the case's breathing)")
        info = json.loads((case / "case.json").read_text()) if (case / "case.json").exists() else {}
        if airway is None:
            airway = load_case_airway(case)
        self.kind, self.width = kind, int(width)
        self.name = f"truth-depth-{kind}"
        self.scene = Scene.from_airway(airway, _case_breathing(info, kind))
        self.t0 = float(info.get("t0_ns", 0)) * 1e-9  # the simulator's time zero (breathing phase)
        self._truth = truth_by_stamp(case)

    def pose_at(self, stamp: float):
        pose = pose_at_stamp(self._truth, stamp)
        if pose is None:
            raise KeyError(f"no true pose within 1 ms of the frame stamped {stamp:.3f} s")
        return pose

    def depth(self, camera, stamp: float) -> np.ndarray:
        """z-depth (m, 0 where no wall is hit) seen at the frame's true pose through ``camera``."""
        hits, _ = self.scene.cast(camera, self.pose_at(stamp), stamp - self.t0)
        return np.where(hits.valid, hits.depth, 0.0).astype(np.float32)

    def __call__(self, frame) -> DepthTarget:
        cam = frame.camera.scaled(self.width)
        return DepthTarget.from_depth(self.depth(cam, frame.stamp), cam)
