"""Offline evaluation: the tracker over a case's bag (continuous tracking or the paper's
frame-wise protocol), the contract's ``poses.tum`` / ``metrics.json``, and plots.

The same :func:`bronchopt_ros.pipeline.build_tracker` as the node: one tracker implementation.
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .airway.loading import load_airway_with_centerline
from .geometry import Camera, Pose
from .io.bag import read_case_bag
from .io.tum import read_tum, write_tum
from .pipeline import PipelineConfig, build_tracker, prepare_frame
from .skipped_frames import SkippedFrames
from .video_gaps import VideoGaps
from .tracker import ReplayClock, TrackState

__all__ = ["FrameRecord", "track_case", "framewise_case", "summarise", "LEVELS", "truth_by_stamp", "pose_at_stamp"]

LEVELS = ("easy", "medium", "hard")


@dataclass
class FrameRecord:
    stamp: float
    pose: Pose | None
    truth: Pose | None
    state: int
    confidence: float
    time_s: float
    iterations: int
    rgb: np.ndarray | None = field(default=None, repr=False)
    camera: Camera | None = field(default=None, repr=False)
    latency_s: float = math.nan  # (--realtime) receive-to-pose: the wait for the worker + its time
    generation: int = -1  # airway generation at the true pose (0: trachea; -1: unknown)


def load_case_airway(case: Path):
    mesh = next((case / f"airway.{ext}" for ext in ("ply", "stl", "obj") if (case / f"airway.{ext}").exists()), None)
    if mesh is None:
        raise FileNotFoundError(f"{case}: no airway.ply/.stl/.obj")
    return load_airway_with_centerline(mesh, units="mm", compute=False)


#: Airway regions reported apart (generations, inclusive): where a single frame or the tracker
#: struggles differs (a plain tube in the trachea, narrow bronchi deeper).
GENERATION_GROUPS = {"trachea": (0, 0), "generations 1-2": (1, 2), "generations 3-4": (3, 4),
                     "generations 5+": (5, 1 << 30)}


def _label_generations(records: list[FrameRecord], airway) -> None:
    """Set each record's airway generation at its true pose (from the case's centerline)."""
    cl = getattr(airway, "centerline", None)
    with_truth = [r for r in records if r.truth is not None]
    if cl is None or not with_truth:
        return
    for r, g in zip(with_truth, cl.generation_at(np.array([r.truth.t for r in with_truth]))):
        r.generation = int(g)


def truth_by_stamp(case: Path) -> dict[int, Pose]:
    """A case's true poses (``truth.tum``) keyed by their stamps in milliseconds ({} if none)."""
    if not (case / "truth.tum").exists():
        return {}
    stamps, poses = read_tum(case / "truth.tum")
    return {int(round(t * 1e3)): p for t, p in zip(stamps, poses)}  # key: milliseconds


def pose_at_stamp(table: dict[int, Pose], stamp: float) -> Pose | None:
    """The pose of ``table`` (:func:`truth_by_stamp`) within 1 ms of ``stamp`` (s), or None."""
    k = int(round(stamp * 1e3))
    return table.get(k, table.get(k - 1, table.get(k + 1)))


def track_case(case: str | Path, cfg: PipelineConfig | None = None, encoder=None, progress: bool = True,
               keep_frames: int = 0, predictor=None, max_frames: int | None = None, on_result=None,
               realtime: float | None = None, registration_s: float | None = None, follow_s: float | None = None,
               init_xi: np.ndarray | None = None, drop_image=None):
    """Continuous tracking over every frame of ``case``'s bag, from its /initialpose.

    ``drop_image(event)`` True: that image is left out, as if the video had dropped it
    (bench/bench_drops.py); the tracker never sees it.

    ``init_xi`` (6: v in m, w in rad, camera frame) moves that /initialpose by ``pose.retract``:
    runs that differ only by a tiny ``init_xi`` show how far the outcome spreads.

    ``realtime``: replay as the node sees a live camera instead of every frame: while the tracker
    is busy the frames queue in a one-slot buffer (the newest wins), so frames are skipped. The
    tracker is busy ``realtime`` seconds per frame, or its measured time per frame when 0. Only
    the processed frames are recorded (the node publishes nothing for the others). The replay runs
    in real time (it sleeps until a frame's turn), so a pipelined tracker's background work gets the
    idle time between frames it gets in the node; without ``realtime`` every frame is registered
    before the next (``registration_wait_s`` inf).

    With a fixed ``realtime`` > 0 the run is reproducible: time is the replay's
    (:class:`ReplayClock`) - a frame's registration, finishing beside the next frames, is done
    ``registration_s`` (default ``realtime``) after its frame started, and a followed skipped frame
    costs ``follow_s`` (default a third of ``realtime``) in the catch-up's time share. A
    ``registration_s`` longer than ``realtime`` models busy cores: frames go out on the odometry
    alone until it lands.

    ``on_result(tracker, frame, result)``, if given, is called after each frame (for studies).

    Returns (records, errors, tracker): errors are the bag's damage reports (kept going past them)."""
    case = Path(case)
    cfg = cfg or PipelineConfig()
    if realtime is None:  # every frame registered before the next (a pipelined tracker waits for it)
        cfg = replace(cfg, tracker=replace(cfg.tracker, registration_wait_s=math.inf))
    airway = load_case_airway(case)
    tracker = build_tracker(airway, cfg, encoder=encoder, predictor=predictor)
    if realtime is not None and realtime > 0:
        tracker.clock = ReplayClock(realtime if registration_s is None else registration_s,
                                    realtime / 3 if follow_s is None else follow_s)
    truth = truth_by_stamp(case)
    records: list[FrameRecord] = []
    errors: list[str] = []
    camera: Camera | None = None
    bar = _bar(progress, "tracking")
    slot = (_NewestFrameSlot(realtime, keep_skipped=tracker.config.catch_up_max, wait_for_newer=tracker.wait_for_newer)
            if realtime is not None else None)
    clock = None  # (realtime) perf_counter() minus the replay's time
    gaps = VideoGaps()
    for ev in _with_end(read_case_bag(case / "procedure")):
        if ev is None:  # end of the bag: the frame still waiting in the slot is processed
            ev = slot.take_last() if slot is not None else None
            if ev is None:
                break
        elif ev.kind == "image" and drop_image is not None and drop_image(ev):
            continue
        elif ev.kind == "image":
            gaps.add(ev.stamp_s)  # (the frames the video lost, as the node counts them)
            if slot is not None:
                ev = slot.offer(ev)
                if ev is None:
                    continue
        if ev.kind == "error":
            errors.append(ev.error)
            continue
        if ev.kind == "camera_info":
            camera = ev.data
        elif ev.kind == "initialpose":
            tracker.initialise(ev.data if init_xi is None else ev.data.retract(init_xi), ev.covariance)
        elif ev.kind == "image":
            if camera is None:
                errors.append(f"image at {ev.stamp_ns} ns before any camera_info: skipped")
                continue
            try:
                frame = prepare_frame(ev.data, camera, ev.stamp_s)
            except ValueError as exc:
                errors.append(f"image at {ev.stamp_ns} ns: {exc}")
                continue
            if slot is not None:
                # In real time from here on: what a pipelined tracker finishes in the background
                # gets the idle time between frames it gets in the node.
                clock = time.perf_counter() - slot.start if clock is None else clock
                lag = slot.start - (time.perf_counter() - clock)
                if lag > 0:
                    time.sleep(lag)
            index = getattr(tracker.relocaliser, "index", None)
            was_ready = index is None or index.ready
            skipped, skipped_stamps = [], []
            if slot is not None:  # the node keeps the last skipped frames; the odometry may follow some
                kept = slot.taken_skipped
                skipped_stamps = [e.stamp_s for e in kept]
                for i in tracker.select_skipped([e.stamp_s for e in kept], ev.stamp_s):
                    try:
                        skipped.append(prepare_frame(kept[i].data, camera, kept[i].stamp_s))
                    except ValueError:
                        pass
            if tracker.clock is not None:
                tracker.clock.now = slot.start
            res = tracker.process(frame, skipped, skipped_stamps)
            latency_s = math.nan
            if slot is not None:
                slot.done(res.time_s)
                latency_s = slot.busy_until - frame.stamp  # arrival to done, in the replay's time
            if not was_ready and index.ready:
                # The relocalisation index was built on this frame's first need. The node builds it
                # in the background when the mesh arrives, so it is not a frame's cost: reported apart.
                tracker.index_build_s = index.warm().build_s
                res.time_s = max(0.0, res.time_s - tracker.index_build_s)
            if on_result is not None:
                on_result(tracker, frame, res)
            gt = pose_at_stamp(truth, frame.stamp)
            keep = keep_frames > 0
            rec = FrameRecord(frame.stamp, res.pose, gt, int(res.state), res.confidence, res.time_s, res.iterations,
                              frame.rgb if keep else None, frame.camera if keep else None, latency_s)
            records.append(rec)
            if bar is not None:
                bar.update(1)
                if gt is not None and res.pose is not None:
                    e = [r.pose.translation_error(r.truth) * 1e3 for r in records if r.pose and r.truth]
                    bar.set_postfix(err_mm=f"{np.mean(e):.2f}", fps=f"{1.0 / max(np.mean([r.time_s for r in records]), 1e-6):.0f}")
            if max_frames and len(records) >= max_frames:
                break
    if bar is not None:
        bar.close()
    _label_generations(records, airway)
    tracker.skipped_frames = slot.skipped if slot is not None else 0
    tracker.waited_for_newer = slot.waited_for_newer if slot is not None else 0
    tracker.video_gaps, tracker.video_frames_missing = gaps.gaps, gaps.missing
    return records, errors, tracker


def _with_end(events):
    yield from events
    yield None


class _NewestFrameSlot:
    """The node's frame queue, replayed in bag time: one slot, the newest frame wins, the worker
    takes it when free - or, when ``wait_for_newer(waited_s, period_s)`` (the tracker's latency
    budget, as in the node) says so, lets it go and waits for the next one. :meth:`offer` returns
    the frame the worker takes next (or None)."""

    def __init__(self, cost_s: float, keep_skipped: int = 64, wait_for_newer=None):
        self.cost_s = cost_s  # seconds the worker is busy per frame (0: the measured time)
        self.wait_for_newer = wait_for_newer
        self.pending = None
        self.busy_until = -math.inf
        self.start = math.nan  # when the worker started on the frame it took last
        self.skipped = 0
        self.waited_for_newer = 0
        self._stamps: deque = deque(maxlen=16)  # the last frames' stamps (the camera's period)
        self._recent = SkippedFrames(max(2, keep_skipped))  # the frames skipped since a take, as the node keeps them
        self.taken_skipped: list = []  # ... those before the frame just taken (oldest first)

    def _skip_pending(self) -> None:
        self.skipped += 1
        self._recent.append(self.pending, self.pending.stamp_s)

    def _take(self, ev, start: float):
        self.taken_skipped = self._recent.take()
        self.start = start
        return ev

    def offer(self, ev):
        self._stamps.append(ev.stamp_s)
        take = None
        if self.pending is not None:
            if self.busy_until <= ev.stamp_s:  # the worker got free before this frame arrived
                free = max(self.busy_until, self.pending.stamp_s)
                wait = self._wait(free, list(self._stamps)[:-1])  # (the stamps known before ev)
                if wait > 0 and ev.stamp_s <= free + wait:  # the next frame came in time: it replaces the old
                    self._skip_pending()
                    self.pending = None
                    return self._take(ev, ev.stamp_s)
                take = self._take(self.pending, free + wait)  # (after waiting in vain, if it did)
            else:
                self._skip_pending()
        self.pending = ev
        return take

    def _wait(self, free: float, stamps: list) -> float:
        """How long the worker, free at ``free``, waits for a newer frame than the pending one."""
        if self.wait_for_newer is None or len(stamps) < 2:
            return 0.0
        wait = self.wait_for_newer(free - self.pending.stamp_s, float(np.median(np.diff(stamps))),
                                   self.cost_s if self.cost_s > 0 else None)
        self.waited_for_newer += int(wait > 0)
        return wait

    def take_last(self):
        """The frame still waiting at the end of the bag (None if none): no newer one comes."""
        if self.pending is None:
            return None
        free = max(self.busy_until, self.pending.stamp_s)
        ev, start = self.pending, free + self._wait(free, list(self._stamps))
        self.pending = None
        return self._take(ev, start)

    def done(self, measured_s: float) -> None:
        """The worker finished the frame it took last (in ``measured_s`` of its own time)."""
        self.busy_until = self.start + (self.cost_s if self.cost_s > 0 else measured_s)


def framewise_case(case: str | Path, level: str, cfg: PipelineConfig | None = None, encoder=None,
                   progress: bool = True, predictor=None, max_frames: int | None = None):
    """The paper's protocol: every frame listed in ``starts/<level>.tum`` registered independently
    from its stored start. Returns (records, starts, errors)."""
    case = Path(case)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
    sfile = case / "starts" / f"{level}.tum"
    if not sfile.exists():
        raise FileNotFoundError(f"{sfile} not found (frame-wise starts are written by `bronchopt sim benchmark`)")
    cfg = cfg or PipelineConfig()
    airway = load_case_airway(case)
    tracker = build_tracker(airway, cfg, encoder=encoder, predictor=predictor)
    s_stamps, s_poses = read_tum(sfile)
    starts = {int(round(t * 1e3)): p for t, p in zip(s_stamps, s_poses)}
    truth = truth_by_stamp(case)
    records, used_starts, errors = [], [], []
    camera = None
    bar = _bar(progress, f"frame-wise {level}", total=len(starts))
    for ev in read_case_bag(case / "procedure"):
        if ev.kind == "error":
            errors.append(ev.error)
        elif ev.kind == "camera_info":
            camera = ev.data
        elif ev.kind == "image" and camera is not None:
            start = pose_at_stamp(starts, ev.stamp_s)
            if start is None:
                continue
            frame = prepare_frame(ev.data, camera, ev.stamp_s)
            t0 = time.perf_counter()
            reg, conf = tracker.register_once(frame, start)
            dt = time.perf_counter() - t0
            records.append(FrameRecord(frame.stamp, reg.pose, pose_at_stamp(truth, frame.stamp),
                                       int(TrackState.TRACKING), conf, dt, reg.iterations))
            used_starts.append(start)
            if bar is not None:
                bar.update(1)
            if max_frames and len(records) >= max_frames:
                break
    if bar is not None:
        bar.close()
    _label_generations(records, airway)
    return records, used_starts, errors, tracker


def summarise(records: list[FrameRecord], lost_gap_s: bool = True) -> dict:
    """metrics.json content (../shared/CONTRACT.md keys, plus a few more)."""
    from .metrics import is_success, pose_error_stats

    pairs = [(r.pose, r.truth) for r in records if r.pose is not None and r.truth is not None]
    out: dict = {"frames": len(records)}
    if pairs:
        out.update(pose_error_stats([p for p, _ in pairs], [g for _, g in pairs]))
        out["frames"] = len(records)
        # Frames without any estimate count as failures in the success rate over all frames.
        out["success_rate"] = out["success_rate"] * len(pairs) / max(len(records), 1)
    times = np.array([r.time_s for r in records]) if records else np.zeros(1)
    out["fps_mean"] = float(1.0 / max(times.mean(), 1e-9))
    # Receive-to-pose, as the node measures it: the time a frame took (replayed as a live camera:
    # from its arrival, the wait for the worker included).
    latency = np.array([r.latency_s if math.isfinite(r.latency_s) else r.time_s for r in records]) if records \
        else np.zeros(1)
    out["latency_ms_p50"] = float(np.percentile(latency, 50) * 1e3)
    out["latency_ms_p95"] = float(np.percentile(latency, 95) * 1e3)
    lost = [r.state != int(TrackState.TRACKING) for r in records]
    out["lost_frames"] = int(sum(lost))
    # The frames that would mislead a user: reported TRACKING (so published as trusted) while
    # beyond the success bounds (5 mm / 10 deg).
    out["wrong_while_tracking"] = int(sum(1 for r, l in zip(records, lost) if not l and r.pose is not None
                                          and r.truth is not None and not is_success(r.pose, r.truth)))
    # Stretches not TRACKING (seconds): the longest, and those that ended back in TRACKING
    # (recoveries: by the local search or the relocalisation index).
    longest, start, recoveries = 0.0, None, []
    for r, l in zip(records, lost):
        if l and start is None:
            start = r.stamp
        if not l and start is not None:
            longest = max(longest, r.stamp - start)
            recoveries.append(r.stamp - start)
            start = None
    if start is not None and records:
        longest = max(longest, records[-1].stamp - start)
    out["longest_lost_s"] = float(longest)
    out["lost_stretches"] = len(recoveries) + int(start is not None)
    out["recoveries"] = len(recoveries)
    out["recovery_s_mean"] = float(np.mean(recoveries)) if recoveries else 0.0
    by_gen = {}
    for name, (lo, hi) in GENERATION_GROUPS.items():
        grp = [r for r in records if lo <= r.generation <= hi]
        ok = [(r.pose, r.truth) for r in grp if r.pose is not None]
        if grp and ok:
            st = pose_error_stats([p for p, _ in ok], [g for _, g in ok])
            by_gen[name] = {"frames": len(grp), "trans_err_mm_mean": st["trans_err_mm_mean"],
                            "rot_err_rad_mean": st["rot_err_rad_mean"],
                            "success_rate": st["success_rate"] * len(ok) / len(grp)}
    if by_gen:
        out["by_generation"] = by_gen  # (airway generation at the true pose)
    return out


def framewise_metrics(records: list[FrameRecord], starts: list[Pose], tracker) -> dict:
    """The paper's figures over all frames and over the successful ones, the start error, and the
    depth-image metrics (rendered depth at the estimate vs at the truth)."""
    from .metrics import depth_metrics, pose_error_stats

    out = summarise(records)
    pairs = [(r, s) for r, s in zip(records, starts) if r.truth is not None and r.pose is not None]
    if not pairs:
        return out
    out["start"] = pose_error_stats([s for _, s in pairs], [r.truth for r, _ in pairs])
    ok = [r for r, _ in pairs if r.pose.translation_error(r.truth) < 5e-3 and r.pose.rotation_error(r.truth) < math.radians(10)]
    if ok:
        out["successful"] = pose_error_stats([r.pose for r in ok], [r.truth for r in ok])
    cam = Camera(200, 200, 110.2, 110.3, 100.6, 103.7).scaled(64)
    dm = [depth_metrics(tracker.renderer.render(cam, r.pose).depth, tracker.renderer.render(cam, r.truth).depth, cam)
          for r, _ in pairs[:: max(1, len(pairs) // 50)]]
    for k in dm[0]:
        out[f"depth_{k}"] = float(np.mean([d[k] for d in dm]))
    return out


def write_results(out_dir: str | Path, records: list[FrameRecord], metrics: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    est = [(r.stamp, r.pose) for r in records if r.pose is not None]
    write_tum(out / "poses.tum", [s for s, _ in est], [p for _, p in est])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))


def _bar(progress: bool, desc: str, total: int | None = None):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True)
