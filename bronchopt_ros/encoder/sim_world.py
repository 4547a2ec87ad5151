"""Training worlds from the simulator (:mod:`bronchopt_ros.sim`): synthetic anatomies, breathing,
the endoscope image model and its appearance domains.

An anatomy takes seconds to generate (CT synthesis, segmentation, marching cubes), so each is
cached as ``<cache_dir>/anatomy_<seed>.npz`` (vertices, faces, centerline). Each anatomy gets
seeded breathing parameters (amplitude 1-4 %, CT-to-body divergence 0.3-1.5 mm); a frame sees the
body at a random time of the cycle, or (share ``p_static``) the undeformed CT.

Only train seeds (1000-1999) may be used for training and validation seeds (2000-2999) for
validation (:mod:`bronchopt_ros.sim.splits`); test anatomies (>= 3000) are refused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..airway.centerline import Centerline
from ..airway.mesh import Airway
from ..geometry import Camera, Pose

__all__ = ["SimWorld", "load_anatomy", "validation_worlds", "training_worlds"]

log = logging.getLogger("bronchopt.encoder")


def _default_cache() -> Path:
    from .backends import default_cache_dir

    return default_cache_dir() / "anatomies"


def load_anatomy(seed: int, cache_dir: str | Path | None = None, anatomy: dict | None = None) -> Airway:
    """The airway of synthetic anatomy ``seed`` (generated once, then read from the cache), made
    with ``anatomy``'s :class:`~bronchopt_ros.sim.anatomy.AnatomyParams` overrides (None or {}:
    the defaults), cached apart per overrides."""
    from ..sim.splits import split_of

    if split_of(seed) == "test":
        raise ValueError(f"anatomy {seed} is a test anatomy: never used by the encoder's training/validation")
    cache = Path(cache_dir) if cache_dir else _default_cache()
    from ..sim.anatomy import AnatomyParams, generate_anatomy, overrides_tag

    path = cache / f"anatomy_{int(seed)}{overrides_tag(anatomy)}.npz"
    if path.exists():
        try:
            z = np.load(path)
            cl = Centerline.from_dict(json.loads(str(z["centerline"])))
            return Airway(z["vertices"], z["faces"], cl)
        except Exception as exc:  # a partial / stale file: regenerate
            log.warning("regenerating anatomy %d (cache unreadable: %s)", seed, exc)
    a = generate_anatomy(int(seed), AnatomyParams(**(anatomy or {}))).airway
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vertices=a.vertices, faces=a.faces.astype(np.int32),
             centerline=json.dumps(a.centerline.to_dict()))
    tmp.replace(path)
    return a


@dataclass
class SimWorld:
    """One synthetic anatomy as a training world (see :class:`bronchopt_ros.encoder.data.World`)."""

    seed: int
    cache_dir: str | None = None
    breathing: bool = True
    p_static: float = 0.25
    light_offset: tuple[float, float] | None = None  # m: replaces the domain's range (sample_appearance)
    anatomy: dict | None = None  # AnatomyParams overrides of the airway (load_anatomy)
    name: str = ""
    scene: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from ..sim.breathing import BreathingParams
        from ..sim.trajectory import LumenSampler
        from ..sim.views import Scene

        self.name = self.name or f"anatomy{self.seed}"
        airway = load_anatomy(self.seed, self.cache_dir, self.anatomy)
        self.airway = airway
        bp = None
        if self.breathing:
            rng = np.random.default_rng((self.seed, 11))
            # per-anatomy breathing amplitude and divergence (seeded), same family as the cases
            bp = BreathingParams(amplitude=float(rng.uniform(0.01, 0.04)), divergence=float(rng.uniform(0.3e-3, 1.5e-3)),
                                 phase=0.0)
        self.scene = Scene.from_airway(airway, bp)
        self.raycaster = self.scene.raycaster  # undeformed CT
        self.sampler = LumenSampler(airway, raycaster=self.raycaster)

    def sample_pose(self, rng: np.random.Generator) -> Pose:
        return self.sampler.sample(rng)[0]

    def view(self, camera: Camera, pose: Pose, rng: np.random.Generator, domain: str = "train") -> dict:
        from ..sim.appearance import sample_appearance
        from ..sim.views import render_view

        app = sample_appearance(rng, domain, self.light_offset)
        scene = self.scene
        t = 0.0
        if scene.breathing is not None and rng.random() >= self.p_static:
            t = float(rng.uniform(0.0, scene.breathing.params.period_s))
            v = render_view(scene, camera, pose, app, rng, t=t)
        else:
            breathing, scene.breathing = scene.breathing, None  # the undeformed CT itself
            try:
                v = render_view(scene, camera, pose, app, rng)
            finally:
                scene.breathing = breathing
        return {"rgb": v.rgb, "depth": v.depth, "normals": v.normals, "t": t}


def training_worlds(n: int, cache_dir: str | None = None, breathing: bool = True) -> list[SimWorld]:
    from ..sim.splits import TRAIN_SEEDS

    return [SimWorld(s, cache_dir, breathing) for s in list(TRAIN_SEEDS)[:n]]


def validation_worlds(n: int, cache_dir: str | None = None, breathing: bool = True) -> list[SimWorld]:
    from ..sim.splits import VAL_SEEDS

    return [SimWorld(s, cache_dir, breathing) for s in list(VAL_SEEDS)[:n]]
