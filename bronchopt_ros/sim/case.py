"""Write one benchmark case folder exactly as ../shared/CONTRACT.md says.

::

    <case>/airway.ply          lumen surface, ct frame, millimetres
    <case>/airway.ply.centerline.json   its centerline branch graph (metres; read by the loaders)
    <case>/procedure/          rosbag2 (mcap): image_raw rgb8 + camera_info (same stamps),
                               /initialpose before the first image, /bronchoscope/pose_gt
    <case>/truth.tum           the ground truth (metres), image stamps
    <case>/starts/{easy,medium,hard}.tum   perturbed start poses for sampled frames
    <case>/case.json           seed, split, parameters, appearance, timing

The starts follow the BronchOpt frame-wise protocol: for every sampled frame a start pose off the
truth by a translation and a rotation whose means are exactly the paper's levels (easy 1.94 mm /
0.14 rad, medium 4.29 / 0.34, hard 6.96 / 0.49; magnitudes stratified over 0.5-1.5x the mean,
random directions), each start inside the lumen. The same frames are used at every level.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from ..airway.mesh import Airway
from ..geometry import Camera, Pose
from .appearance import Appearance, sample_appearance
from .breathing import BreathingParams
from .splits import appearance_domain, check_split, split_of
from .trajectory import (CenterlineIndex, Trajectory, TrajectoryError, TrajectoryParams, inside_lumen,
                         plan_procedure)

__all__ = ["CaseParams", "CaseResult", "START_LEVELS", "PAPER_CAMERA", "write_case", "make_starts", "params_from_json",
           "case_camera", "frame_stamps_ns"]

#: start error levels of the paper's frame-wise protocol: (translation m, rotation rad)
START_LEVELS: dict[str, tuple[float, float]] = {"easy": (1.94e-3, 0.14), "medium": (4.29e-3, 0.34),
                                                "hard": (6.96e-3, 0.49)}
#: the BronchOpt benchmark camera, 200x200 (../shared/REFERENCE.md)
PAPER_CAMERA = Camera(200, 200, 110.2, 110.3, 100.6, 103.7)
#: first image stamp of every case (2023-11-14T22:13:20Z), integer nanoseconds
T0_NS = 1_700_000_000_000_000_000


@dataclass
class CaseParams:
    """How a case is made. ``breathing=None`` renders the undeformed CT anatomy."""

    n_frames: int = 300
    size: int = 200  # image width = height; the paper's camera scaled to it
    fov_deg: float | None = None  # horizontal field of view (a centred pinhole camera); None: the paper's (84.5 deg)
    fps: float = 30.0
    breathing: BreathingParams | None = field(default_factory=BreathingParams)
    split: str | None = None  # None: from the seed (splits.split_of)
    appearance_domain: str | None = None  # None: from the split
    trajectory: TrajectoryParams = field(default_factory=TrajectoryParams)
    target_leaf: int | None = None
    starts: bool = True
    start_every: int = 5  # starts for every k-th frame (the same frames at every level)
    start_margin: float = 0.4e-3  # starts keep this much of the lumen radius clear (or 20 %)
    storage: str = "mcap"
    compressed: str | None = None  # also write image_raw/compressed ("jpeg" | "png")
    raw_images: bool = True
    autogain_smoothing: float = 0.35  # exponential smoothing of the exposure across frames
    write_ct: bool = False  # also write the synthetic CT as ct.nii.gz
    t0_ns: int = T0_NS


@dataclass
class CaseResult:
    """Where a case went and what it took."""

    path: Path
    seed: int
    frames: int
    timing: dict
    info: dict = field(default_factory=dict)


def case_camera(size: int = 200, fov_deg: float | None = None) -> Camera:
    """The paper's camera at ``size`` x ``size`` pixels, or a centred one with the horizontal
    field of view ``fov_deg``."""
    if fov_deg is not None:
        return Camera.from_fov(size, size, fov_deg)
    return PAPER_CAMERA if size == 200 else PAPER_CAMERA.scaled(size, size)


def frame_stamps_ns(n: int, fps: float, t0_ns: int = T0_NS) -> np.ndarray:
    """Integer-nanosecond stamps of ``n`` frames at ``fps``."""
    return t0_ns + np.round(np.arange(n) * (1e9 / fps)).astype(np.int64)


def params_from_json(cls, d: dict):
    """Rebuild a settings dataclass (``Appearance``, ``BreathingParams``, ``AnatomyParams``...) from
    its ``case.json`` entry: lists back to tuples, keys the class does not know dropped."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def _jsonable(x: Any) -> Any:
    if is_dataclass(x):
        return _jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    return x


# =========================================================================== starts
def make_starts(poses: list[Pose], frames: list[int], index: CenterlineIndex, raycaster, rng: np.random.Generator,
                levels: dict[str, tuple[float, float]] | None = None, margin: float = 0.4e-3,
                tries: int = 200) -> tuple[list[int], dict[str, list[Pose]]]:
    """Perturbed start poses for ``frames`` (indices into ``poses``) at every level.

    Magnitudes are stratified so that each level's mean translation / rotation error is exactly
    its target; directions are random, re-drawn until the start's centre is inside the lumen.
    A frame where some level cannot be placed is replaced by the nearest unused frame. Returns
    (the frames used, {level: starts in frame order}).
    """
    levels = levels or START_LEVELS
    n = len(frames)
    mags = {}
    for name, (mt, mr) in levels.items():
        strata = 0.5 + (np.arange(n) + 0.5) / max(n, 1)  # mean exactly 1
        mags[name] = (mt * rng.permutation(strata), mr * rng.permutation(strata))
    used: list[int] = []
    out: dict[str, list[Pose]] = {k: [] for k in levels}
    taken = set(frames)
    pool = [i for i in range(len(poses)) if i not in taken]
    for k, f in enumerate(frames):
        candidates = [f] + sorted(pool, key=lambda j: abs(j - f))[:20]
        for cand in candidates:
            starts = {}
            for name in levels:
                mt, mr = mags[name][0][k], mags[name][1][k]
                s = _one_start(poses[cand], mt, mr, index, raycaster, rng, margin, tries)
                if s is None:
                    break
                starts[name] = s
            if len(starts) == len(levels):
                used.append(cand)
                if cand != f:
                    pool.remove(cand)
                for name, s in starts.items():
                    out[name].append(s)
                break
        else:
            raise TrajectoryError(f"no start inside the lumen near frame {f}")
    order = np.argsort(used, kind="stable")
    return [used[i] for i in order], {k: [v[i] for i in order] for k, v in out.items()}


def _one_start(truth: Pose, mt: float, mr: float, index: CenterlineIndex, raycaster, rng: np.random.Generator,
               margin: float, tries: int) -> Pose | None:
    d = rng.standard_normal((tries, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    centres = truth.t + mt * d
    ok = inside_lumen(centres, index, None, margin=margin, margin_frac=0.2)
    cand = np.flatnonzero(ok)
    if len(cand) == 0:
        return None
    # mesh checks only for the first few candidates that pass the centerline test
    cand = cand[:16]
    ok2 = inside_lumen(centres[cand], index, raycaster, margin=margin, margin_frac=0.2)
    good = cand[ok2]
    if len(good) == 0:
        return None
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    R = truth.R @ Rotation.from_rotvec(axis * mr).as_matrix()
    return Pose(R, centres[good[0]])


# =========================================================================== the case
def write_case(out_dir: str | Path, seed: int, params: CaseParams | None = None, *, anatomy: Any = None,
               anatomy_params: Any = None, appearance: Appearance | None = None, progress: bool = False,
               anatomy_source: str | Path | None = None) -> CaseResult:
    """Write the case of anatomy ``seed`` to ``out_dir`` (created; existing files overwritten,
    an existing ``procedure/`` bag is replaced).

    ``anatomy`` may be a ready :class:`~bronchopt_ros.sim.anatomy.SyntheticAnatomy` or an
    :class:`Airway` with a centerline (then nothing is generated and the seed only seeds the
    procedure; ``anatomy_source``, the file it came from, goes into case.json); ``anatomy_params``
    are passed to ``generate_anatomy`` otherwise.
    """
    import shutil

    from ..airway.loading import save_centerline, sidecar_path
    from ..render.raycast import Raycaster
    from ..io.bag import BagWriter
    from ..io.tum import write_tum
    from .views import Scene, render_view
    from .endoscope import AutoGain

    p = params or CaseParams()
    seed = int(seed)
    split = p.split if p.split is not None else split_of(seed)
    check_split(seed, p.split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timing[name] = round(now - tick, 3)
        tick = now

    # --- anatomy
    ct = None
    if anatomy is None:
        from .anatomy import generate_anatomy

        anatomy = generate_anatomy(seed, anatomy_params, progress=progress)
    if isinstance(anatomy, Airway):
        airway = anatomy
        anatomy_info = {"source": "given airway", "file": None if anatomy_source is None else str(anatomy_source)}
    else:
        airway, ct = anatomy.airway, getattr(anatomy, "ct", None)
        anatomy_info = {"source": "generate_anatomy", "params": _jsonable(getattr(anatomy, "params", None)),
                        "timing": _jsonable(getattr(anatomy, "timings", {}))}
    if airway.centerline is None:
        raise ValueError("write_case needs an airway with a centerline")
    lap("anatomy_s")
    airway.to_trimesh("mm").export(out / "airway.ply")
    save_centerline(airway.centerline, sidecar_path(out / "airway.ply"))  # airway.ply.centerline.json
    if p.write_ct and ct is not None:
        ct.save(out / "ct.nii.gz")
    lap("mesh_write_s")

    # --- procedure
    ss = np.random.SeedSequence([seed, 0xB0C4])
    rng_traj, rng_app, rng_img, rng_starts = (np.random.default_rng(s) for s in ss.spawn(4))
    raycaster = Raycaster(airway.vertices, airway.faces)
    traj: Trajectory | None = None
    err = None
    for attempt in range(6):
        try:
            traj = plan_procedure(airway, rng_traj, target_leaf=p.target_leaf if attempt == 0 else None,
                                  fps=p.fps, n_frames=p.n_frames, params=p.trajectory, raycaster=raycaster)
            break
        except TrajectoryError as exc:
            err = exc
    if traj is None:
        raise TrajectoryError(f"no valid procedure for seed {seed}: {err}")
    lap("trajectory_s")

    domain = p.appearance_domain or appearance_domain(split)
    app = appearance or sample_appearance(rng_app, domain)
    if app.light_offset > p.trajectory.max_light_offset:  # (the light guide lies within the scope's tip)
        app = replace(app, light_offset=p.trajectory.max_light_offset)
    breathing = p.breathing
    if breathing is not None:
        breathing = BreathingParams(**{**asdict(breathing), "seed": seed})
    scene = Scene.from_airway(airway, breathing)
    camera = case_camera(p.size, p.fov_deg)
    stamps = frame_stamps_ns(len(traj), p.fps, p.t0_ns)
    lap("scene_s")

    bag_dir = out / "procedure"
    if bag_dir.exists():
        shutil.rmtree(bag_dir)
    agc = AutoGain(p.autogain_smoothing) if app.autogain else None
    render_s = 0.0
    frames = range(len(traj))
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc=f"case {seed}", unit="frame", leave=False)
    with BagWriter(bag_dir, storage=p.storage, raw_images=p.raw_images, compressed_images=p.compressed) as bag:
        bag.write_initialpose(int(stamps[0]) - 100_000_000, traj.poses[0])
        for i in frames:
            t_r = time.perf_counter()
            view = render_view(scene, camera, traj.poses[i], app, rng_img, t=float(traj.stamps_s[i]), gain_control=agc)
            render_s += time.perf_counter() - t_r
            bag.write_frame(int(stamps[i]), view.rgb, camera, traj.poses[i])
        counts = dict(bag.counts)
    lap("render_and_bag_s")
    timing["render_s"] = round(render_s, 3)
    timing["bag_s"] = round(timing["render_and_bag_s"] - render_s, 3)

    write_tum(out / "truth.tum", stamps, traj.poses)
    starts_info = None
    if p.starts:
        frames_sel = list(range(0, len(traj), max(1, int(p.start_every))))
        used, starts = make_starts(traj.poses, frames_sel, scene.index, raycaster, rng_starts, START_LEVELS,
                                   margin=p.start_margin)
        for level, poses in starts.items():
            write_tum(out / "starts" / f"{level}.tum", stamps[used], poses)
        starts_info = {"frames": used, "levels": {
            k: {"target_trans_m": START_LEVELS[k][0], "target_rot_rad": START_LEVELS[k][1],
                "mean_trans_m": float(np.mean([traj.poses[f].translation_error(s) for f, s in zip(used, v)])),
                "mean_rot_rad": float(np.mean([traj.poses[f].rotation_error(s) for f, s in zip(used, v)]))}
            for k, v in starts.items()}}
    lap("starts_s")
    timing["total_s"] = round(time.perf_counter() - t_all, 3)
    timing["total_without_anatomy_s"] = round(timing["total_s"] - timing["anatomy_s"], 3)

    info = {
        "format": "bronchopt-case/1",
        "seed": seed,
        "split": split,
        "appearance_domain": domain,
        "frames": len(traj),
        "fps": p.fps,
        "t0_ns": int(stamps[0]),
        "camera": camera.to_dict(),
        "mesh": {"file": "airway.ply", "units": "mm", "vertices": int(len(airway.vertices)),
                 "faces": int(len(airway.faces))},
        "anatomy": anatomy_info,
        "centerline_branches": len(airway.centerline),
        "trajectory": {**traj.to_dict(), "params": _jsonable(p.trajectory)},
        "breathing": _jsonable(breathing),
        "appearance": app.to_dict(),
        "bag": {"path": "procedure", "storage": p.storage, "messages": counts},
        "starts": starts_info,
        "params": _jsonable({k: v for k, v in asdict(p).items() if k not in ("trajectory", "breathing")}),
        "timing": timing,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }
    (out / "case.json").write_text(json.dumps(_jsonable(info), indent=1), encoding="utf-8")
    return CaseResult(out, seed, len(traj), timing, info)
