"""Which per-frame signal tells a right pose from a wrong one? (issue 8: loss detection)

Runs the tracker over cases (continuous tracking from /initialpose) and records, per frame, the
pose error and candidate confidence signals measured at the estimate:

* ``si``         the scale-invariant log error of the encoder's depth against the rendered depth
                 (the tracker's original confidence);
* ``valid``      the share of pixels that see the mesh;
* ``sim``        the encoder's dense similarity (mean cosine) at the estimate;
* ``margin``     ``sim`` minus the best similarity over 12 poses 2 mm / 0.1 rad away (positive: the
                 estimate is a distinct optimum of the similarity the encoder was trained to rank);
* ``rank``       the share of those 12 poses whose similarity is below the estimate's;
* ``inliers``    the odometry's PnP inliers (0 without odometry);
* ``innovation`` how far the registration moved from the odometry's prediction, in prior sigmas.

Prints, per signal, the AUROC of separating failed frames (error > 5 mm or > 10 deg) from the rest
and writes a JSON with the per-frame table, so thresholds are chosen on validation cases and
checked on the test split::

    python bench/bench_confidence.py data/val/case_2500 data/val/case_2501 --out bench/results/confidence_val.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bronchopt_ros.evaluation import track_case
from bronchopt_ros.pipeline import EncoderDepthPredictor, PipelineConfig, load_default_encoder
from bronchopt_ros.threads import limit_threads
from bronchopt_ros.geometry import Pose


def pose_probes(pose: Pose, trans: float = 0.002, rot: float = 0.1) -> list[Pose]:
    """The 12 poses ``trans`` metres along and ``rot`` radians about each camera axis, both signs."""
    out = []
    for k in range(6):
        for sign in (1.0, -1.0):
            xi = np.zeros(6)
            xi[k] = sign * (trans if k < 3 else rot)
            out.append(pose.retract(xi))
    return out


class _Recording(EncoderDepthPredictor):
    """The encoder's depth predictor, keeping the last frame's target."""

    last = None

    def __call__(self, frame):
        self.last = super().__call__(frame)
        return self.last


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) (Mann-Whitney), ties count half."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def signals(tracker, encoder, target, frame_camera, pose, width: int = 64) -> dict:
    cam = frame_camera.scaled(width, max(1, round(width * frame_camera.height / frame_camera.width)))
    poses = [pose] + pose_probes(pose)
    depths = torch.stack([torch.as_tensor(tracker.renderer.render(cam, p, normals=False).depth).float() for p in poses])
    valid = depths > 0
    with torch.no_grad():
        f = encoder.encode_depth(depths, valid)
        m = encoder.depth_mask(depths, valid)
        s = encoder.similarity(target.features.expand(len(poses), -1, -1, -1), f, m).numpy()
    return {"sim": float(s[0]), "margin": float(s[0] - s[1:].max()), "rank": float((s[1:] < s[0]).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="depth")
    ap.add_argument("--max-frames", type=int, default=None)
    args = ap.parse_args(argv)
    limit_threads()
    cfg = PipelineConfig()
    cfg.tracker.mode = args.mode
    encoder = load_default_encoder(cfg)
    rows = []
    for case in args.cases:
        pred = _Recording(encoder)
        t0 = time.perf_counter()
        # Hook: measure the signals right after each frame, before the next one replaces the target.
        out_rows = []

        def hook(tracker, frame, res, case=case):
            if res.pose is None or pred.last is None:
                return
            row = {"case": Path(case).name, "stamp": frame.stamp, "si": res.si_error, "valid": res.valid_fraction,
                   "confidence": res.confidence, "state": int(res.state), "inliers": res.odometry_inliers,
                   "innovation": res.innovation}
            row.update(signals(tracker, encoder, pred.last, frame.camera, res.pose))
            out_rows.append(row)

        records, _, _ = track_case(case, cfg, predictor=pred, progress=False, max_frames=args.max_frames,
                                   on_result=hook)
        by_stamp = {round(r.stamp, 6): r for r in records}
        for row in out_rows:
            r = by_stamp[round(row["stamp"], 6)]
            row["err_mm"] = r.pose.translation_error(r.truth) * 1e3
            row["err_deg"] = math.degrees(r.pose.rotation_error(r.truth))
        rows += out_rows
        print(f"{Path(case).name}: {len(out_rows)} frames in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    fail = np.array([r["err_mm"] > 5 or r["err_deg"] > 10 for r in rows])
    far = np.array([r["err_mm"] > 2 for r in rows])
    table = {}
    for key, sign in (("si", -1), ("valid", 1), ("sim", 1), ("margin", 1), ("rank", 1), ("confidence", 1),
                      ("inliers", 1), ("innovation", -1)):
        v = sign * np.array([r[key] for r in rows], float)
        v = np.nan_to_num(v, nan=-1e9, posinf=1e9, neginf=-1e9)
        table[key] = {"auroc_fail": auroc(-v, fail), "auroc_2mm": auroc(-v, far)}
    print(f"{len(rows)} frames, {fail.mean():.0%} failed (> 5 mm or > 10 deg), {far.mean():.0%} beyond 2 mm")
    print("| signal | AUROC failed | AUROC > 2 mm |\n| --- | --- | --- |")
    for k, v in table.items():
        print(f"| {k} | {v['auroc_fail']:.3f} | {v['auroc_2mm']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"auroc": table, "frames": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
