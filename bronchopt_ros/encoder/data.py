"""Training pairs: an RGB frame and the CT depth at the same pose (and at perturbed poses).

A *world* is one airway we can look into: it samples camera poses inside the lumen, renders what
the scope sees (RGB, depth, normals; possibly of a breathing, deformed anatomy) and holds a
:class:`~bronchopt_ros.render.raycast.Raycaster` of the undeformed CT surface, which gives the
depth the tracker will compare the frame with. :class:`PairGenerator` turns worlds into training
samples; :class:`PairDataset` streams them from a DataLoader worker.

Worlds:
* :class:`SimWorld` (:mod:`bronchopt_ros.sim`): synthetic anatomies, the simulator's endoscope
  renderer and appearance model. This is what the shipped weights are trained on.
* :class:`ToyWorld`: a procedural bent tube with Lambertian shading, a light stand-in used by the
  fast tests (never for shipped weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ..geometry import Camera, Pose
from ..render.raycast import Raycaster
from .augment import AugmentConfig, augment_rgb

__all__ = ["World", "ToyWorld", "PairConfig", "PairGenerator", "PairDataset", "sample_perturbation",
           "collate", "toy_worlds", "tube_mesh", "EVAL_PERTURBATIONS", "fixed_perturbation"]

#: The perturbations of the evidence: translations (metres) and rotations (radians).
EVAL_PERTURBATIONS: tuple[tuple[str, float], ...] = (
    ("t", 0.001), ("t", 0.002), ("t", 0.005), ("r", 0.05), ("r", 0.1), ("r", 0.3))


class World(Protocol):
    """One airway to sample training frames from."""

    name: str
    raycaster: Raycaster  # the undeformed CT surface (metres)

    def sample_pose(self, rng: np.random.Generator) -> Pose: ...

    def view(self, camera: Camera, pose: Pose, rng: np.random.Generator, domain: str) -> dict:
        """What the scope sees: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres (0 = miss),
        ``normals`` (H, W, 3) float32 camera frame."""
        ...


# ------------------------------------------------------------------------------------ perturbations
def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def sample_perturbation(rng: np.random.Generator, trans: tuple[float, float] = (0.0003, 0.006),
                        rot: tuple[float, float] = (0.01, 0.35)) -> np.ndarray:
    """A random right increment xi = (v, w): a translation, a rotation or both, magnitudes
    log-uniform in ``trans`` (metres) and ``rot`` (radians)."""
    kind = int(rng.integers(3))
    xi = np.zeros(6)
    if kind in (0, 2):
        xi[:3] = _unit(rng) * np.exp(rng.uniform(np.log(trans[0]), np.log(trans[1])))
    if kind in (1, 2):
        xi[3:] = _unit(rng) * np.exp(rng.uniform(np.log(rot[0]), np.log(rot[1])))
    return xi


def fixed_perturbation(rng: np.random.Generator, kind: str, magnitude: float) -> np.ndarray:
    """A translation (``kind`` = "t", metres) or rotation ("r", radians) of the given size, random direction."""
    xi = np.zeros(6)
    if kind == "t":
        xi[:3] = _unit(rng) * magnitude
    else:
        xi[3:] = _unit(rng) * magnitude
    return xi


# ------------------------------------------------------------------------------------ toy world
def tube_mesh(rng: np.random.Generator, length: float = 0.08, radius: float = 0.007, n_ring: int = 48,
              step: float = 0.0005) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bent tube with a varying radius and cartilage-ring ripples (metres), normals outwards.

    Returns (vertices, faces, centerline points (N, 3), radii (N,)). The ends are open.
    """
    n = int(length / step) + 1
    s = np.linspace(0.0, length, n)
    # Direction turns smoothly: random low-frequency curvature in two axes.
    k1 = rng.normal(0, 8.0, 3)
    k2 = rng.normal(0, 8.0, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    curv_a = (k1[0] * np.sin(2 * np.pi * s / length + ph[0]) + k1[1] * np.sin(4 * np.pi * s / length + ph[1])) * 0.5
    curv_b = (k2[0] * np.sin(2 * np.pi * s / length + ph[2]) + k2[1] * np.cos(3 * np.pi * s / length)) * 0.5
    t = np.array([0.0, 0.0, 1.0])
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    pts, frames = [np.zeros(3)], [(a, b)]
    for i in range(1, n):
        t = t + step * (curv_a[i] * a + curv_b[i] * b)
        t /= np.linalg.norm(t)
        a = a - t * (a @ t)
        a /= np.linalg.norm(a)
        b = np.cross(t, a)
        pts.append(pts[-1] + step * t)
        frames.append((a, b))
    pts = np.array(pts)
    r = radius * (1.0 + 0.2 * np.sin(2 * np.pi * s / (length * rng.uniform(0.3, 0.8)) + rng.uniform(0, 6)))
    r = r * (1.0 + 0.03 * np.sin(2 * np.pi * s / 0.004))  # cartilage rings
    ang = np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
    wobble = 1.0 + 0.08 * np.sin(2 * ang[None, :] + rng.uniform(0, 6)) * np.cos(2 * np.pi * s / length)[:, None]
    A = np.array([f[0] for f in frames])
    Bv = np.array([f[1] for f in frames])
    verts = (pts[:, None, :] + (r[:, None] * wobble)[..., None]
             * (np.cos(ang)[None, :, None] * A[:, None, :] + np.sin(ang)[None, :, None] * Bv[:, None, :]))
    verts = verts.reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n_ring), indexing="ij")
    v00 = i * n_ring + j
    v01 = i * n_ring + (j + 1) % n_ring
    v10 = v00 + n_ring
    v11 = v01 + n_ring
    faces = np.concatenate([np.stack([v00, v11, v10], -1).reshape(-1, 3), np.stack([v00, v01, v11], -1).reshape(-1, 3)])
    return verts, faces, pts, r


@dataclass
class ToyWorld:
    """A procedural tube with Lambertian shading from a light at the camera (test stand-in)."""

    seed: int
    name: str = ""
    raycaster: Raycaster = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.name = self.name or f"toy{self.seed}"
        v, f, self.points, self.radii = tube_mesh(rng)
        self.raycaster = Raycaster(v, f)
        self.albedo = np.array([1.0, 0.5, 0.45]) * rng.uniform(0.7, 1.0, 3)
        self.tex_freq = rng.normal(0, 400.0, (4, 3))
        self.tex_phase = rng.uniform(0, 2 * np.pi, 4)

    def sample_pose(self, rng: np.random.Generator) -> Pose:
        n = len(self.points)
        i = int(rng.integers(int(0.1 * n), int(0.85 * n)))
        p, r = self.points[i], self.radii[i]
        fwd = self.points[min(i + 10, n - 1)] - p
        fwd /= np.linalg.norm(fwd)
        off = rng.normal(size=3)
        off -= fwd * (off @ fwd)
        off *= rng.uniform(0, 0.5) * r / max(np.linalg.norm(off), 1e-9)
        d = fwd + rng.normal(0, 0.3, 3)
        eye = p + off
        pose = Pose.look_at(eye, eye + d, up=_unit(rng))
        return pose

    def view(self, camera: Camera, pose: Pose, rng: np.random.Generator, domain: str = "train") -> dict:
        hits = self.raycaster.cast(camera, pose)
        rays = camera.rays(np.float64)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        cos = np.abs((hits.normal_cam * rays).sum(-1))
        d = np.maximum(hits.depth, 1e-4) * np.linalg.norm(camera.rays(np.float64), axis=-1)
        tex = 1.0 + 0.15 * np.sin(hits.point_ct @ self.tex_freq.T + self.tex_phase).sum(-1)
        shade = (0.1 + cos) * tex / (d / 0.01) ** 2
        img = shade[..., None] * self.albedo
        img[~hits.valid] = 0.0
        img /= max(np.percentile(img[hits.valid], 95) if hits.valid.any() else 1.0, 1e-9) / 0.85
        img = np.clip(img, 0, 1) ** (1 / 2.2)
        return {"rgb": (img * 255 + 0.5).astype(np.uint8), "depth": hits.depth, "normals": hits.normal_cam}


def toy_worlds(seeds: Sequence[int] = (0, 1)) -> list[ToyWorld]:
    return [ToyWorld(int(s)) for s in seeds]


# ------------------------------------------------------------------------------------ pairs
@dataclass
class PairConfig:
    """How a training sample is drawn."""

    size: int = 128  # rendered square resolution (the encoder's input_size)
    fov_deg: tuple[float, float] = (70.0, 95.0)
    n_perturb: int = 4
    trans_m: tuple[float, float] = (0.0003, 0.006)
    rot_rad: tuple[float, float] = (0.01, 0.35)
    min_valid: float = 0.3  # share of pixels that must hit the surface
    domain: str = "train"  # appearance domain of the simulator
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)


class PairGenerator:
    """Draws training samples from a list of worlds (see the module docstring)."""

    def __init__(self, worlds: Sequence[World], cfg: PairConfig | None = None):
        if not worlds:
            raise ValueError("PairGenerator needs at least one world")
        self.worlds = list(worlds)
        self.cfg = cfg or PairConfig()

    def camera(self, rng: np.random.Generator) -> Camera:
        S = self.cfg.size
        cam = Camera.from_fov(S, S, rng.uniform(*self.cfg.fov_deg))
        return Camera(S, S, cam.fx, cam.fy * rng.uniform(0.97, 1.03), cam.cx + rng.normal(0, 0.02 * S),
                      cam.cy + rng.normal(0, 0.02 * S))

    def sample(self, rng: np.random.Generator, world_index: int | None = None) -> dict:
        cfg = self.cfg
        for _ in range(50):
            wi = int(rng.integers(len(self.worlds))) if world_index is None else int(world_index)
            world = self.worlds[wi]
            cam = self.camera(rng)
            pose = world.sample_pose(rng)
            ct = world.raycaster.cast(cam, pose)
            if ct.valid.mean() < cfg.min_valid or ct.inside_fraction() < 0.95:
                continue
            view = world.view(cam, pose, rng, cfg.domain)
            if (view["depth"] > 0).mean() < cfg.min_valid:
                continue
            break
        else:
            raise RuntimeError(f"could not find a valid view in world {world.name}")
        xis = np.array([sample_perturbation(rng, cfg.trans_m, cfg.rot_rad) for _ in range(cfg.n_perturb)]).reshape(-1, 6)
        S = cfg.size
        dp = np.array([world.raycaster.cast(cam, pose.retract(xi)).depth for xi in xis]).reshape(-1, S, S)
        rgb = view["rgb"]
        if cfg.augment is not None:
            rgb = augment_rgb(rgb, rng, cfg.augment)
        return {"rgb": rgb, "depth": view["depth"].astype(np.float32), "normals": view["normals"].astype(np.float32),
                "depth_ct": ct.depth.astype(np.float32), "depth_pert": dp.astype(np.float32),
                "xi": xis.astype(np.float32), "world": wi, "pose": pose.matrix, "camera": cam}


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples into tensors: rgb (B, 3, S, S) float in [0, 1], depth/depth_ct (B, 1, S, S),
    normals (B, 3, S, S), depth_pert (B, K, 1, S, S), xi (B, K, 6), world (B,), pose (B, 4, 4)."""
    out = {}
    out["rgb"] = torch.from_numpy(np.stack([s["rgb"] for s in samples])).permute(0, 3, 1, 2).float() / 255.0
    out["depth"] = torch.from_numpy(np.stack([s["depth"] for s in samples]))[:, None]
    out["normals"] = torch.from_numpy(np.stack([s["normals"] for s in samples])).permute(0, 3, 1, 2)
    out["depth_ct"] = torch.from_numpy(np.stack([s["depth_ct"] for s in samples]))[:, None]
    out["depth_pert"] = torch.from_numpy(np.stack([s["depth_pert"] for s in samples]))[:, :, None]
    out["xi"] = torch.from_numpy(np.stack([s["xi"] for s in samples]))
    out["world"] = torch.tensor([s["world"] for s in samples])
    out["pose"] = torch.from_numpy(np.stack([s["pose"] for s in samples]))  # float64
    return out


class PairDataset(torch.utils.data.IterableDataset):
    """An endless stream of samples. ``make_worlds`` is called inside each worker (Embree scenes
    cannot be pickled); worker ``i`` draws from ``numpy.random.default_rng((seed, i, epoch))``."""

    def __init__(self, make_worlds: Callable[[], Sequence[World]], cfg: PairConfig, seed: int, start: int = 0):
        super().__init__()
        self.make_worlds, self.cfg, self.seed, self.start = make_worlds, cfg, int(seed), int(start)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id
        gen = PairGenerator(self.make_worlds(), self.cfg)
        rng = np.random.default_rng((self.seed, wid, self.start))
        while True:
            yield gen.sample(rng)
