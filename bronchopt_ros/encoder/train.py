"""Training of the encoder on synthetic pairs (``bronchopt train``).

One step draws a batch of RGB frames (train anatomies, train appearance domain, heavy
augmentation) with the CT depth at the true pose and at ``n_perturb`` perturbed poses
(:mod:`.data`), and minimises

    w_si * SI-log + w_grad * gradient matching + w_nll * Laplace NLL + w_hit * hit BCE
    [+ w_normal * normals] + w_dense * dense InfoNCE + w_rank * pose ranking + w_embed * embedding InfoNCE
    + w_drank * depth ranking

(:mod:`.losses`). Every ``val_every`` steps it validates on held-out anatomies (fixed frames,
cached in the run folder): SI-log error of the depth head on the train and the test appearance
domain, the share of frames whose similarity at the true pose beats the fixed perturbations
(1, 2, 5 mm; 0.05, 0.1, 0.3 rad), and embedding recall@1. It checkpoints every
``ckpt_minutes`` (and at each validation), resumes from ``<out>/checkpoint.pt`` with
``resume=True``, draws ``<out>/curves.png`` and writes the fp16 inference weights to
``<out>/encoder.pt``.

Determinism: the model, the data stream (per worker and per resume point) and the pixel
sampling are seeded from ``seed``. The LR schedule is by step (``steps``); with a time budget
(``minutes``) it also follows the elapsed time (so a run on a busy machine still anneals), which
makes such runs reproducible only up to where the budget cut in.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .augment import AugmentConfig
from .config import ModelConfig
from .data import EVAL_PERTURBATIONS, PairConfig, PairDataset, PairGenerator, collate, fixed_perturbation
from .losses import (dense_infonce, depth_ranking, embedding_infonce, gradient_matching, hit_bce, laplace_nll,
                     normal_loss, pose_ranking, si_log)
from .model import EncoderNet, rgb_outputs, similarity
from .runtime import save_checkpoint

__all__ = ["TrainConfig", "train", "WorldFactory", "make_val_set", "validate"]

log = logging.getLogger("bronchopt.encoder")


@dataclass
class WorldFactory:
    """Builds the worlds of a split inside a data worker (picklable)."""

    source: str = "sim"  # "sim" (bronchopt_ros.sim) or "toy" (procedural tubes; tests only)
    seeds: tuple[int, ...] = (1000,)
    cache_dir: str | None = None  # anatomies are cached here (sim)
    breathing: bool = True
    light_offset: tuple[float, float] | None = None  # m: the training frames' light guide offsets (sim)
    # AnatomyParams overrides (sim): the i-th seed's airway is made with anatomy[i % len(anatomy)]
    # ({}: the defaults); empty: every one with the defaults
    anatomy: tuple[dict, ...] = ()

    def __call__(self) -> list:
        if self.source == "toy":
            from .data import ToyWorld

            return [ToyWorld(int(s)) for s in self.seeds]
        if self.source == "sim":
            from .sim_world import SimWorld

            return [SimWorld(int(s), cache_dir=self.cache_dir, breathing=self.breathing,
                             light_offset=self.light_offset,
                             anatomy=self.anatomy[i % len(self.anatomy)] if self.anatomy else None)
                    for i, s in enumerate(self.seeds)]
        raise ValueError(f"unknown data source {self.source!r}")


@dataclass
class TrainConfig:
    """Everything a training run needs (saved as ``<out>/train_config.json``)."""

    out: str = "runs/enc"
    steps: int = 4000  # length of the LR schedule
    minutes: float | None = None  # stop early after this wall-clock time (checkpointed)
    batch_size: int = 8
    input_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    seed: int = 0
    threads: int = 1  # torch threads of the training process
    workers: int = 1  # data worker processes (0 = in the training process)
    source: str = "sim"
    train_seeds: tuple[int, ...] = tuple(range(1000, 1016))
    val_seeds: tuple[int, ...] = (2000, 2001, 2002, 2003)
    val_frames: int = 24  # per validation anatomy
    val_every: int = 500
    ckpt_minutes: float = 3.0
    breathing: bool = True
    n_perturb: int = 4
    # perturbed poses of the ranking / dense negatives: log-uniform magnitudes (metres, radians)
    trans_m: tuple[float, float] = (0.0003, 0.006)
    rot_rad: tuple[float, float] = (0.01, 0.35)
    # warm start: weights of an earlier run (its checkpoint.pt or encoder.pt); fresh optimiser and schedule
    init: str | None = None
    # loss weights and temperatures
    w_si: float = 1.0
    w_grad: float = 0.5
    w_nll: float = 0.1
    w_hit: float = 0.2
    w_normal: float = 0.2
    w_dense: float = 1.0
    w_rank: float = 1.0
    w_embed: float = 0.2
    w_drank: float = 0.0  # depth ranking (the default tracker's objective); tried in session 16, see MODEL_CARD.md
    tau_dense: float = 0.1
    tau_rank: float = 0.02
    tau_embed: float = 0.1
    tau_drank: float = 0.01
    n_pixels: int = 128
    p_illumination: float = 0.0  # share of frames given an uneven illumination field (augment.py)
    p_film: float = 0.0  # share of frames given a fluid film on the lens (augment.py)
    # the training frames' light guide offsets (min, max in m); None: the train domain's 0-0.6 mm.
    # Validation keeps each domain's own (its figures stay comparable between runs).
    light_offset: tuple[float, float] | None = None
    # the training anatomies' AnatomyParams overrides, dealt out over the training seeds in turn
    # (WorldFactory.anatomy; {} = the defaults), e.g. [{}, {"trachea_diameter_mm": 14, "generations": 8}]
    # gives every second training airway a narrow, deep tree. Validation keeps the defaults, like the light.
    anatomy: tuple[dict, ...] = ()
    queue_size: int = 512
    model: ModelConfig = field(default_factory=ModelConfig)
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d.get("model", {}))
        shape = d.pop("lumen_shape", None)  # before session 31: the lumens' shape alone
        if shape and not d.get("anatomy"):
            d["anatomy"] = [{"lumen_ellipticity": shape[0], "lumen_lobes": shape[1]}]
        for k in ("train_seeds", "val_seeds", "trans_m", "rot_rad", "light_offset", "anatomy"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------ validation set
def make_val_set(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Fixed validation frames of the held-out anatomies (cached as ``<out>/val_set.pt``).

    Per frame: RGB in the train and in the test appearance domain (no augmentation), the visible
    depth, the CT depth at the true pose and at the fixed :data:`EVAL_PERTURBATIONS`.
    """
    path = Path(cfg.out) / "val_set.pt"
    key = {"seeds": list(cfg.val_seeds), "frames": cfg.val_frames, "size": cfg.input_size, "source": cfg.source}
    if path.exists():
        cached = torch.load(str(path), weights_only=False)
        if cached.get("key") == key:
            return cached["data"]
    worlds = WorldFactory(cfg.source, cfg.val_seeds, str(Path(cfg.out) / "cache"), cfg.breathing)()
    pc = PairConfig(size=cfg.input_size, n_perturb=0, augment=None, domain="train")
    gen = PairGenerator(worlds, pc)
    samples, test_rgb, pert = [], [], []
    for wi, world in enumerate(worlds):
        rng = np.random.default_rng((cfg.val_seeds[wi], 7))
        for _ in range(cfg.val_frames):
            s = gen.sample(rng, world_index=wi)
            cam_rng = np.random.default_rng(rng.integers(1 << 62))
            pose = _pose_of(s)
            cam = _camera_of(s)
            test_rgb.append(world.view(cam, pose, cam_rng, "test")["rgb"])
            dp = [world.raycaster.cast(cam, pose.retract(fixed_perturbation(rng, k, m))).depth
                  for k, m in EVAL_PERTURBATIONS]
            pert.append(np.stack(dp).astype(np.float32))
            samples.append(s)
    data = collate(samples)
    data["rgb_test"] = torch.from_numpy(np.stack(test_rgb)).permute(0, 3, 1, 2).float() / 255.0
    data["depth_eval"] = torch.from_numpy(np.stack(pert))[:, :, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "data": data}, str(path))
    return data


def _pose_of(sample: dict):
    from ..geometry import Pose

    return Pose.from_matrix(sample["pose"].astype(np.float64))


def _camera_of(sample: dict):
    return sample["camera"]


@torch.no_grad()
def validate(net: EncoderNet, val: dict[str, torch.Tensor], input_size: int, chunk: int = 16) -> dict[str, float]:
    """Validation metrics of ``net`` on a set from :func:`make_val_set`."""
    net.eval()
    grid = net.grid(input_size)
    si_tr, si_te, wins, emb_r, emb_d = [], [], [], [], []
    n = len(val["rgb"])
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        out = rgb_outputs(*net.rgb_graph()(val["rgb"][sl]))
        out_te = rgb_outputs(*net.rgb_graph()(val["rgb_test"][sl]))
        d = val["depth"][sl]
        m = d > 0
        ld = torch.log(d.clamp_min(1e-6))
        si_tr.append(si_log(out["log_depth"], ld, m, per_image=True))
        si_te.append(si_log(out_te["log_depth"], ld, m, per_image=True))
        dc = val["depth_ct"][sl]
        f0, v0, x0 = net.forward_depth(dc, None, grid)
        s0 = similarity(out["features"], f0, v0)
        de = val["depth_eval"][sl]
        B, K = de.shape[:2]
        fk, vk, _ = net.forward_depth(de.flatten(0, 1), None, grid)
        sk = similarity(out["features"].repeat_interleave(K, 0), fk, vk).view(B, K)
        wins.append(s0[:, None] > sk)
        emb_r.append(out["embedding"])
        emb_d.append(net.embed_depth(x0, f0))
    wins = torch.cat(wins).float()
    er, ed = torch.cat(emb_r), torch.cat(emb_d)
    recall = (torch.argmax(er @ ed.T, dim=1) == torch.arange(n)).float().mean()
    res = {"si_log": float(torch.cat(si_tr).mean()), "si_log_test_domain": float(torch.cat(si_te).mean()),
           "rank_acc": float(wins.all(dim=1).float().mean()), "embed_recall1": float(recall)}
    for k, (kind, mag) in enumerate(EVAL_PERTURBATIONS):
        name = f"rank_{mag * 1e3:g}mm" if kind == "t" else f"rank_{mag:g}rad"
        res[name] = float(wins[:, k].mean())
    return res


# ------------------------------------------------------------------------------------ training
def _lr_factor(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 2 % over the run. With a time budget (``minutes``) the
    decay follows whichever of the step and the wall-clock fractions is further, so the run always
    anneals inside its budget."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    if cfg.minutes:
        p = max(p, min(1.0, elapsed_s / (cfg.minutes * 60.0)))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * p))


def _worker_init(_):
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def compute_losses(net: EncoderNet, batch: dict[str, torch.Tensor], cfg: TrainConfig, grid: int,
                   queue: torch.Tensor | None, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The training objective on one batch. Returns (total, {name: value}, depth embeddings)."""
    dense, feats, emb = net.rgb_graph()(batch["rgb"])
    out = rgb_outputs(dense, feats, emb)
    d = batch["depth"]
    m = d > 0
    ld = torch.log(d.clamp_min(1e-6))
    terms = {}
    terms["si"] = si_log(out["log_depth"], ld, m)
    terms["grad"] = gradient_matching(out["log_depth"], ld, m)
    terms["nll"] = laplace_nll(out["log_depth"], out["log_sigma"], ld, m)
    terms["hit"] = hit_bce(dense[:, 2:3], m)
    if "normals" in out and cfg.w_normal > 0:
        terms["normal"] = normal_loss(out["normals"], batch["normals"], m)
    B, K = batch["depth_pert"].shape[:2]
    depths = torch.cat([batch["depth_ct"], batch["depth_pert"].flatten(0, 1)], dim=0)
    f, v, x = net.forward_depth(depths, None, grid)
    f0, v0, x0 = f[:B], v[:B], x[:B]
    fk, vk = f[B:].view(B, K, *f.shape[1:]), v[B:].view(B, K, *v.shape[1:])
    terms["dense"] = dense_infonce(out["features"], f0, v0, fk, vk, cfg.n_pixels, cfg.tau_dense, gen)
    terms["rank"], acc = pose_ranking(out["features"], f0, v0, fk, vk, cfg.tau_rank)
    if cfg.w_drank > 0:
        m_ct = batch["depth_ct"] > 0
        terms["drank"], dacc = depth_ranking(out["log_depth"], torch.log(batch["depth_ct"].clamp_min(1e-6)), m_ct,
                                             torch.log(batch["depth_pert"].clamp_min(1e-6)), batch["depth_pert"] > 0,
                                             cfg.tau_drank)
    e_d = net.embed_depth(x0, f0)
    terms["embed"] = embedding_infonce(out["embedding"], e_d, queue, cfg.tau_embed)
    w = {"si": cfg.w_si, "grad": cfg.w_grad, "nll": cfg.w_nll, "hit": cfg.w_hit, "normal": cfg.w_normal,
         "dense": cfg.w_dense, "rank": cfg.w_rank, "embed": cfg.w_embed, "drank": cfg.w_drank}
    total = sum(w[k] * v_ for k, v_ in terms.items())
    logs = {k: float(v_.detach()) for k, v_ in terms.items()}
    logs["rank_acc"] = float(acc)
    if "drank" in terms:
        logs["drank_acc"] = float(dacc)
    logs["loss"] = float(total.detach())
    return total, logs, e_d.detach()


def _plot(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr, va = history.get("train", []), history.get("val", [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if tr:
        steps = np.array([r["step"] for r in tr])
        for key in ("loss", "si", "dense", "rank", "embed", "drank"):
            if key not in tr[-1]:
                continue
            vals = np.array([r.get(key, np.nan) for r in tr])
            k = max(1, len(vals) // 50)
            sm = np.convolve(vals, np.ones(k) / k, mode="valid")
            axes[0].plot(steps[k - 1:], sm, label=key)
        axes[0].set_yscale("log")
        axes[0].set_title("training losses")
        axes[0].set_xlabel("step")
        axes[0].legend()
    if va:
        steps = [r["step"] for r in va]
        for key in ("si_log", "si_log_test_domain"):
            axes[1].plot(steps, [r[key] for r in va], "o-", label=key)
        axes[1].set_title("validation: depth head SI-log")
        axes[1].set_xlabel("step")
        axes[1].legend()
        for key in [k for k in va[-1] if k.startswith("rank_") or k == "embed_recall1"]:
            axes[2].plot(steps, [r[key] for r in va], "o-", label=key)
        axes[2].set_title("validation: true pose wins / recall@1")
        axes[2].set_xlabel("step")
        axes[2].set_ylim(0, 1.02)
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    plt.close(fig)


def _init_state(path: str) -> dict:
    """The network weights (fp32) in a training checkpoint or a shipped ``encoder.pt``."""
    ck = torch.load(str(path), weights_only=False, map_location="cpu")
    state = ck["net"] if "net" in ck else ck.get("state_dict", ck)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or resume) and return the final validation metrics. Writes into ``cfg.out``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ckpt_path = out / "checkpoint.pt"
    net = EncoderNet(cfg.model)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict = {"train": [], "val": []}
    step, elapsed0 = 0, 0.0
    queue = torch.zeros(0, cfg.model.embed_dim)
    if resume and ckpt_path.exists():
        ck = torch.load(str(ckpt_path), weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step, history, elapsed0, queue = ck["step"], ck["history"], ck["elapsed"], ck["queue"]
        torch.set_rng_state(ck["torch_rng"])
        log.info("resumed from %s at step %d (%.1f min)", ckpt_path, step, elapsed0 / 60)
    elif cfg.init:
        net.load_state_dict(_init_state(cfg.init))
        log.info("warm start from %s", cfg.init)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    val = make_val_set(cfg)
    factory = WorldFactory(cfg.source, cfg.train_seeds, str(out / "cache"), cfg.breathing, cfg.light_offset,
                           cfg.anatomy)
    pc = PairConfig(size=cfg.input_size, n_perturb=cfg.n_perturb, domain="train", trans_m=cfg.trans_m,
                    rot_rad=cfg.rot_rad, augment=AugmentConfig(p_illumination=cfg.p_illumination, p_film=cfg.p_film))
    ds = PairDataset(factory, pc, cfg.seed, start=step)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, collate_fn=collate,
                                         num_workers=cfg.workers, worker_init_fn=_worker_init if cfg.workers else None,
                                         persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers else None)
    grid = net.grid(cfg.input_size)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    t_start = time.perf_counter()
    t_ckpt = t_start

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - t_start

    def save_ckpt() -> None:
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                    "elapsed": elapsed(), "queue": queue, "torch_rng": torch.get_rng_state(),
                    "config": cfg.to_dict()}, str(ckpt_path) + ".tmp")
        Path(str(ckpt_path) + ".tmp").replace(ckpt_path)

    def run_val() -> dict:
        res = validate(net, val, cfg.input_size)
        res.update(step=step, minutes=elapsed() / 60)
        history["val"].append(res)
        net.train()
        _plot(history, out / "curves.png")
        return res

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, dynamic_ncols=True, desc="train")
    it = iter(loader)
    stopped = "steps"
    net.train()
    while step < cfg.steps:
        if cfg.minutes is not None and elapsed() > cfg.minutes * 60:
            stopped = "minutes"
            break
        t0 = time.perf_counter()
        batch = next(it)
        t_data = time.perf_counter() - t0
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg, elapsed())
        loss, logs, e_d = compute_losses(net, batch, cfg, grid, queue, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        queue = torch.cat([e_d, queue])[: cfg.queue_size]
        step += 1
        logs.update(step=step, t_data=t_data, t_step=time.perf_counter() - t0, lr=opt.param_groups[0]["lr"])
        history["train"].append(logs)
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.3f}", si=f"{logs['si']:.3f}", rank=f"{logs['rank_acc']:.2f}")
        if step % cfg.val_every == 0:
            res = run_val()
            bar.write(f"[step {step}] val " + " ".join(f"{k}={v:.3f}" for k, v in res.items() if k != "step"))
            save_ckpt()
            t_ckpt = time.perf_counter()
        elif time.perf_counter() - t_ckpt > cfg.ckpt_minutes * 60:
            save_ckpt()
            t_ckpt = time.perf_counter()
    bar.close()
    if not history["val"] or history["val"][-1]["step"] != step:
        res = run_val()
    else:
        res = history["val"][-1]
    save_ckpt()
    meta = {"trained_steps": step, "train_minutes": round(elapsed() / 60, 2), "stopped_by": stopped,
            "seed": cfg.seed, "input_size": cfg.input_size, "source": cfg.source,
            "train_seeds": [min(cfg.train_seeds), max(cfg.train_seeds)], "val_seeds": list(cfg.val_seeds),
            "threads": cfg.threads, "workers": cfg.workers, "validation": res}
    save_checkpoint(net.eval(), out / "encoder.pt", meta)
    (out / "history.json").write_text(json.dumps(history))
    _plot(history, out / "curves.png")
    return res
