"""Evidence that the encoder works, through its public API (:class:`~.runtime.Encoder`).

* :func:`ranking` — share of frames whose similarity at the true pose beats the similarity at
  poses perturbed by 1, 2, 5 mm and 0.05, 0.1, 0.3 rad (random directions); the dense features'
  similarity (the paper's) and, as ``depth_rank_*``, the default tracker's: the predicted
  log-depth's scale-invariant error against each CT depth (lower wins);
* :func:`line_search` — along random translation (and rotation) directions, where the
  similarity peaks (grid search refined by a parabola); its distance from the truth;
* :func:`depth_error` — scale-invariant log error of the depth head (Eigen 2014).

Frames come from :func:`eval_frames` (held-out worlds, any appearance domain). The depth the
encoder compares with is the undeformed CT's, rendered with the Embree ray caster.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import Camera, Pose
from .data import EVAL_PERTURBATIONS, PairConfig, PairGenerator, fixed_perturbation

__all__ = ["EvalFrame", "eval_frames", "ranking", "line_search", "depth_error", "evidence"]


@dataclass
class EvalFrame:
    rgb: np.ndarray  # (S, S, 3) uint8
    depth: np.ndarray  # (S, S) what the camera sees (metres, 0 = miss)
    camera: Camera
    pose: Pose
    world: object  # has .raycaster (the undeformed CT surface)

    def ct_depth(self, pose: Pose) -> np.ndarray:
        return self.world.raycaster.cast(self.camera, pose).depth


def eval_frames(worlds, n_per_world: int, size: int = 128, domain: str = "train", seed: int = 0) -> list[EvalFrame]:
    """``n_per_world`` frames per world, RGB in appearance ``domain`` without augmentation."""
    gen = PairGenerator(worlds, PairConfig(size=size, n_perturb=0, augment=None, domain=domain))
    frames = []
    for wi, w in enumerate(worlds):
        rng = np.random.default_rng((seed, wi))
        for _ in range(n_per_world):
            s = gen.sample(rng, world_index=wi)
            frames.append(EvalFrame(s["rgb"], s["depth"], s["camera"], Pose.from_matrix(s["pose"]), w))
    return frames


def _name(kind: str, mag: float) -> str:
    return f"{mag * 1e3:g}mm" if kind == "t" else f"{mag:g}rad"


@torch.no_grad()
def ranking(encoder, frames: list[EvalFrame], perturbations=EVAL_PERTURBATIONS, n_dirs: int = 1,
            seed: int = 0, oracle: bool = False) -> dict[str, float]:
    """Share of (frame, direction) pairs where the true pose's similarity is the higher, per perturbation.

    ``oracle``: also the same share for a perfect depth predictor (``oracle_rank_*``): the depth
    the camera really sees compared with the CT depths by scale-invariant log error. With a
    breathing anatomy the CT at the true pose is not the best explanation of every frame (the
    deformed wall may match a slightly turned pose better): the ceiling of any depth-based
    similarity on these frames.
    """
    rng = np.random.default_rng(seed)
    wins = {(_name(k, m)): [] for k, m in perturbations}
    owins = {n: [] for n in wins}
    dwins = {n: [] for n in wins}
    for fr in frames:
        enc = encoder.encode_rgb(fr.rgb)
        f_rgb = enc.features
        ld = enc.log_depth.cpu().numpy().reshape(fr.depth.shape)
        depths = [fr.ct_depth(fr.pose)]
        names = []
        for k, m in perturbations:
            for _ in range(n_dirs):
                depths.append(fr.ct_depth(fr.pose.retract(fixed_perturbation(rng, k, m))))
                names.append(_name(k, m))
        fd = encoder.encode_depth(torch.from_numpy(np.stack(depths)))
        s = encoder.similarity(f_rgb.expand_as(fd), fd)
        for n, sk in zip(names, s[1:]):
            wins[n].append(bool(s[0] > sk))
        for n, dk in zip(names, depths[1:]):
            dwins[n].append(bool(_pred_si(ld, depths[0], dk) < _pred_si(ld, dk, depths[0])))
        if oracle:
            e = [_si_error(fr.depth, d) for d in depths]
            for n, ek in zip(names, e[1:]):
                owins[n].append(bool(e[0] < ek))
    out = {f"rank_{n}": float(np.mean(v)) for n, v in wins.items()}
    out.update({f"depth_rank_{n}": float(np.mean(v)) for n, v in dwins.items()})
    if oracle:
        out.update({f"oracle_rank_{n}": float(np.mean(v)) for n, v in owins.items()})
    return out


def _pred_si(log_pred: np.ndarray, target: np.ndarray, other: np.ndarray) -> float:
    """Scale-invariant error of a predicted log-depth against ``target``, on the pixels where both
    ``target`` and ``other`` see the wall (so two poses are compared on the same pixels)."""
    m = (target > 0) & (other > 0)
    return _si(log_pred[m] - np.log(target[m])) if m.any() else float("inf")


def _si_error(seen: np.ndarray, ct: np.ndarray) -> float:
    """Scale-invariant log error between two depth maps where both see the wall (inf if nowhere)."""
    m = (seen > 0) & (ct > 0)
    return _si(np.log(seen[m]) - np.log(ct[m])) if m.any() else float("inf")


def _si(r: np.ndarray) -> float:
    """sqrt of the variance of log-depth residuals (Eigen 2014's scale-invariant error)."""
    return float(np.sqrt(max(np.mean(r ** 2) - np.mean(r) ** 2, 0.0)))


def _peak(offsets: np.ndarray, values: np.ndarray) -> float:
    i = int(np.argmax(values))
    if 0 < i < len(values) - 1:
        y0, y1, y2 = values[i - 1], values[i], values[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            return float(offsets[i] + 0.5 * (y0 - y2) / den * (offsets[1] - offsets[0]))
    return float(offsets[i])


@torch.no_grad()
def line_search(encoder, frames: list[EvalFrame], trans_range: float = 0.003, trans_step: float = 0.00025,
                rot_range: float = 0.15, rot_step: float = 0.0125, seed: int = 0) -> dict[str, float]:
    """Where the similarity peaks along one random translation and one random rotation direction per
    frame. Returns the mean / median distance of the peak from the truth (mm, rad)."""
    rng = np.random.default_rng(seed)
    t_off = np.arange(-trans_range, trans_range + 1e-12, trans_step)
    r_off = np.arange(-rot_range, rot_range + 1e-12, rot_step)
    t_err, r_err = [], []
    for fr in frames:
        f_rgb = encoder.encode_rgb(fr.rgb).features
        for kind, offs, errs in (("t", t_off, t_err), ("r", r_off, r_err)):
            u = fixed_perturbation(rng, kind, 1.0)
            depths = np.stack([fr.ct_depth(fr.pose.retract(u * o)) for o in offs])
            fd = encoder.encode_depth(torch.from_numpy(depths))
            s = encoder.similarity(f_rgb.expand_as(fd), fd).cpu().numpy()
            errs.append(abs(_peak(offs, s)))
    t_err, r_err = np.array(t_err) * 1e3, np.array(r_err)
    return {"optimum_trans_err_mm_mean": float(t_err.mean()), "optimum_trans_err_mm_median": float(np.median(t_err)),
            "optimum_rot_err_rad_mean": float(r_err.mean()), "optimum_rot_err_rad_median": float(np.median(r_err))}


@torch.no_grad()
def depth_error(encoder, frames: list[EvalFrame]) -> float:
    """Mean scale-invariant log error (Eigen 2014: sqrt of the variance of the log ratio) over frames."""
    errs = []
    S = encoder.input_size
    for fr in frames:
        ld = encoder.encode_rgb(fr.rgb).log_depth.cpu().numpy()
        d = fr.depth
        if d.shape != (S, S):
            import cv2

            d = cv2.resize(d, (S, S), interpolation=cv2.INTER_NEAREST)
        m = d > 0
        errs.append(_si(ld[m] - np.log(d[m])))
    return float(np.mean(errs))


def evidence(encoder, worlds, n_per_world: int = 24, seed: int = 0, line_search_frames: int | None = None) -> dict:
    """The model card's figures: ranking, line-search optimum, depth error (train and test domains)."""
    tr = eval_frames(worlds, n_per_world, encoder.input_size, "train", seed)
    te = eval_frames(worlds, n_per_world, encoder.input_size, "test", seed)
    res = {"frames": len(tr)}
    res.update(ranking(encoder, tr, seed=seed, oracle=True))
    res["rank_all"] = float(np.mean([v for k, v in res.items() if k.startswith("rank_")]))
    res.update({k + "_test_domain": v for k, v in ranking(encoder, te, seed=seed).items()})
    ls = tr if line_search_frames is None else tr[:line_search_frames]
    res.update(line_search(encoder, ls, seed=seed))
    res["line_search_frames"] = len(ls)
    res["si_log"] = depth_error(encoder, tr)
    res["si_log_test_domain"] = depth_error(encoder, te)
    return res


def main(argv: list[str] | None = None) -> int:
    """``python -m bronchopt_ros.encoder.evaluate [--weights FILE] [--anatomies 4] [--frames 24]``:
    print (and optionally save) the evidence figures on validation anatomies."""
    import argparse
    import json
    import time

    from .config import EncoderConfig
    from .runtime import load_encoder
    from .sim_world import validation_worlds

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--anatomies", type=int, default=4)
    ap.add_argument("--frames", type=int, default=24, help="per anatomy")
    ap.add_argument("--line-search-frames", type=int, default=None)
    ap.add_argument("--cache", default=None, help="anatomy cache folder")
    ap.add_argument("--no-breathing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    enc = load_encoder(EncoderConfig(backend="torch", weights=args.weights))
    t0 = time.perf_counter()
    worlds = validation_worlds(args.anatomies, args.cache, breathing=not args.no_breathing)
    res = evidence(enc, worlds, args.frames, args.seed, args.line_search_frames)
    res.update(anatomies=[w.seed for w in worlds], breathing=not args.no_breathing, seconds=time.perf_counter() - t0)
    print(json.dumps(res, indent=1))
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
