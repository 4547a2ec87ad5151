"""Training losses of the encoder.

Depth head (RGB -> geometry):
* :func:`si_log` — Eigen et al. 2014 scale-invariant log error (the figure reported too);
* :func:`gradient_matching` — multi-scale gradients of the log-depth residual (MiDaS-style),
  for sharp lumen openings;
* :func:`laplace_nll` — the predicted uncertainty (log sigma) of the aligned residual;
* :func:`hit_bce` — which pixels see a surface at all; :func:`normal_loss` — optional normals.

Alignment of the two modalities:
* :func:`dense_infonce` — per-pixel InfoNCE between RGB and depth features at the same pixel;
  negatives are other pixels of the same depth map and the same pixel of depth maps rendered at
  perturbed poses;
* :func:`pose_ranking` — the image-level similarity at the true pose must beat that at the
  perturbed poses (softmax over poses), which is what the tracker's optimiser relies on;
* :func:`depth_ranking` — the same for the default tracker's objective: the predicted log-depth's
  scale-invariant error against the CT depth at the true pose must be below its error against
  the depths at the perturbed poses (a logistic contest per perturbed pose, logits -SI / tau);
* :func:`embedding_infonce` — global embeddings: the RGB frame's must be nearest to the depth
  map of the same place among other places (batch + a queue of past depth embeddings).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import similarity

__all__ = ["si_log", "gradient_matching", "laplace_nll", "hit_bce", "normal_loss", "dense_infonce",
           "pose_ranking", "depth_ranking", "embedding_infonce"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def si_log(pred: torch.Tensor, target_log: torch.Tensor, mask: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """sqrt(mean(r^2) - mean(r)^2) of r = pred - target over ``mask`` (Eigen 2014, lambda = 1).

    ``pred`` and ``target_log`` are log-depths (B, 1, H, W) with any per-image offset.
    """
    m = _flat(mask).to(pred.dtype)
    n = m.sum(1).clamp_min(1.0)
    r = _flat(pred - target_log) * m
    mean = r.sum(1) / n
    var = (r * r).sum(1) / n - mean * mean
    out = torch.sqrt(var.clamp_min(1e-12))
    out = torch.where(m.sum(1) > 0, out, torch.zeros_like(out))
    return out if per_image else out.mean()


def _aligned_residual(pred: torch.Tensor, target_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(pred.dtype)
    r = (pred - target_log) * m
    shift = r.sum(dim=(1, 2, 3), keepdim=True) / m.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    return (pred - target_log - shift) * m


def gradient_matching(pred: torch.Tensor, target_log: torch.Tensor, mask: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Mean |d/dx r| + |d/dy r| of the log-depth residual at ``scales`` subsamplings."""
    total = pred.new_zeros(())
    for s in range(scales):
        k = 2 ** s
        p, t, m = pred[..., ::k, ::k], target_log[..., ::k, ::k], mask[..., ::k, ::k]
        r = _aligned_residual(p, t, m)
        mx = m[..., :, 1:] & m[..., :, :-1]
        my = m[..., 1:, :] & m[..., :-1, :]
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * mx
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * my
        total = total + (gx.sum() + gy.sum()) / (mx.sum() + my.sum()).clamp_min(1)
    return total / scales


def laplace_nll(pred: torch.Tensor, log_sigma: torch.Tensor, target_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Laplace negative log-likelihood of the (shift-aligned, detached) residual under ``log_sigma``."""
    r = _aligned_residual(pred.detach(), target_log, mask).abs()
    nll = r * torch.exp(-log_sigma) + log_sigma
    m = mask.to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp_min(1.0)


def hit_bce(logit: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit, hit.to(logit.dtype))


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cos between unit normals (B, 3, H, W) over ``mask``."""
    cos = (pred * target).sum(1, keepdim=True)
    m = mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


def dense_infonce(f_rgb: torch.Tensor, f_pos: torch.Tensor, valid_pos: torch.Tensor,
                  f_neg: torch.Tensor | None = None, valid_neg: torch.Tensor | None = None,
                  n_pixels: int = 128, tau: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixel-level InfoNCE between RGB features and depth features at the same pixel.

    ``f_rgb``, ``f_pos``: (B, C, h, w) L2-normalised; ``valid_pos`` (B, 1, h, w). ``f_neg``
    (B, K, C, h, w) are depth features at perturbed poses (``valid_neg`` (B, K, 1, h, w)): the same
    pixel there is a hard negative. For each image ``n_pixels`` valid pixels are sampled; each
    one's positive competes with the other sampled pixels' depth features and its own pixel in
    the K perturbed maps.
    """
    B, C = f_rgb.shape[:2]
    losses = []
    for b in range(B):
        idx = torch.nonzero(valid_pos[b, 0].reshape(-1), as_tuple=False)[:, 0]
        if idx.numel() < 8:
            continue
        sel = idx[torch.randperm(idx.numel(), generator=generator, device=idx.device)[:n_pixels]]
        q = f_rgb[b].reshape(C, -1)[:, sel].T  # (P, C)
        k = f_pos[b].reshape(C, -1)[:, sel].T
        logits = q @ k.T  # (P, P), positives on the diagonal
        if f_neg is not None:
            K = f_neg.shape[1]
            kn = f_neg[b].reshape(K, C, -1)[:, :, sel]  # (K, C, P)
            ln = torch.einsum("pc,kcp->pk", q, kn)
            if valid_neg is not None:
                vn = valid_neg[b].reshape(K, -1)[:, sel].T
                ln = torch.where(vn, ln, torch.full_like(ln, -1e4 * tau))
            logits = torch.cat([logits, ln], dim=1)
        target = torch.arange(q.shape[0], device=q.device)
        losses.append(F.cross_entropy(logits / tau, target))
    if not losses:
        return f_rgb.sum() * 0.0
    return torch.stack(losses).mean()


def pose_ranking(f_rgb: torch.Tensor, f_true: torch.Tensor, m_true: torch.Tensor, f_pert: torch.Tensor,
                 m_pert: torch.Tensor, tau: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over poses of the image similarity (true pose = class 0).

    ``f_pert`` (B, K, C, h, w), ``m_pert`` (B, K, 1, h, w). Returns (loss, accuracy of the true pose
    beating every perturbed one).
    """
    s0 = similarity(f_rgb, f_true, m_true)  # (B,)
    sk = similarity(f_rgb.unsqueeze(1), f_pert, m_pert)  # (B, K)
    logits = torch.cat([s0[:, None], sk], dim=1) / tau
    loss = F.cross_entropy(logits, torch.zeros(len(s0), dtype=torch.long, device=s0.device))
    acc = (s0[:, None] > sk).float().mean()
    return loss, acc


def depth_ranking(pred: torch.Tensor, ld_true: torch.Tensor, m_true: torch.Tensor, ld_pert: torch.Tensor,
                  m_pert: torch.Tensor, tau: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """One logistic contest per perturbed pose between -SI(pred, CT depth at the true pose) / tau and
    -SI(pred, CT depth at the perturbed pose) / tau, the true pose to win.

    ``pred``, ``ld_true`` (B, 1, H, W) log-depths, ``m_true`` (B, 1, H, W) bool; ``ld_pert``
    (B, K, 1, H, W), ``m_pert`` (B, K, 1, H, W). Each pair (true, perturbed k) is compared on the
    pixels both depths hit, so a pose is not favoured for seeing less. Returns (loss, accuracy of
    the true pose beating every perturbed one).
    """
    B, K = ld_pert.shape[:2]
    common = m_true.unsqueeze(1) & m_pert  # (B, K, 1, H, W)
    p = pred.unsqueeze(1).expand(B, K, *pred.shape[1:]).flatten(0, 1)
    c = common.flatten(0, 1)
    s0 = si_log(p, ld_true.unsqueeze(1).expand_as(ld_pert).flatten(0, 1), c, per_image=True).view(B, K)
    sk = si_log(p, ld_pert.flatten(0, 1), c, per_image=True).view(B, K)
    ok = c.flatten(1).sum(1).view(B, K) >= 16
    logits = torch.stack([-s0, -sk], dim=-1) / tau  # (B, K, 2): one binary contest per perturbed pose
    loss = F.cross_entropy(logits[ok], torch.zeros(int(ok.sum()), dtype=torch.long, device=pred.device)) \
        if bool(ok.any()) else pred.sum() * 0.0
    acc = ((s0 < sk) | ~ok).all(1).float().mean()
    return loss, acc


def embedding_infonce(e_rgb: torch.Tensor, e_depth: torch.Tensor, queue: torch.Tensor | None = None,
                      tau: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of (B, D) embeddings (row i of each is the same place); ``queue`` (Q, D)
    holds extra depth embeddings of other places (negatives for the RGB side)."""
    keys = e_depth if queue is None or len(queue) == 0 else torch.cat([e_depth, queue], dim=0)
    target = torch.arange(len(e_rgb), device=e_rgb.device)
    l1 = F.cross_entropy(e_rgb @ keys.T / tau, target)
    l2 = F.cross_entropy(e_depth @ e_rgb.T / tau, target)
    return 0.5 * (l1 + l2)
