"""Relocalisation index: global embeddings of depth views rendered along the centerline.

Built once per airway: poses every ``spacing`` along every branch, looking down the branch, at
several rolls (and slight tilts); the encoder's global embedding of each rendered depth map is
stored. A lost frame's RGB embedding is compared with all of them (cosine), and the poses of the
best matches are the relocalisation candidates the tracker refines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import Camera, Pose
from .registration import centerline_hypotheses

__all__ = ["RelocConfig", "RelocalisationIndex"]


@dataclass
class RelocConfig:
    spacing: float = 0.003  # m between indexed positions along a branch
    rolls: int = 6  # rolls per position (evenly over 360 deg)
    width: int = 48  # render width of the indexed views
    top_k: int = 8  # candidates returned per query
    max_generation: int = 6  # index branches up to this generation


class RelocalisationIndex:
    def __init__(self, poses: list[Pose], embeddings: torch.Tensor, config: RelocConfig, build_s: float = 0.0):
        self.poses = poses
        self.embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
        self.config = config
        self.build_s = build_s

    @classmethod
    def build(cls, renderer, encoder, centerline, camera: Camera, config: RelocConfig | None = None):
        cfg = config or RelocConfig()
        t0 = time.perf_counter()
        cam = camera.scaled(cfg.width, max(1, round(cfg.width * camera.height / camera.width)))
        rolls = tuple(np.linspace(0, 2 * np.pi, cfg.rolls, endpoint=False))
        poses, embs = [], []
        for b in centerline.branches:
            if b.generation > cfg.max_generation:
                continue
            from .airway.centerline import Centerline

            sub = Centerline([b])
            # Every point of this branch: a huge radius around its own midpoint.
            for p in centerline_hypotheses(sub, Pose(np.eye(3), b.points[len(b.points) // 2]), radius=1.0,
                                           spacing=cfg.spacing, rolls=rolls):
                out = renderer.render(cam, p, normals=False)
                if not out.inside or out.valid_fraction < 0.5:
                    continue
                with torch.inference_mode():
                    embs.append(encoder.embed_depth(out.depth, out.valid).reshape(-1).float())
                poses.append(p)
        if not embs:
            raise ValueError("relocalisation index: no view along the centerline could be rendered")
        return cls(poses, torch.stack(embs), cfg, time.perf_counter() - t0)

    def __len__(self) -> int:
        return len(self.poses)

    def query(self, embedding: torch.Tensor, k: int | None = None) -> list[Pose]:
        """Poses of the ``k`` indexed views most similar to ``embedding`` (best first)."""
        e = torch.nn.functional.normalize(embedding.reshape(1, -1).float(), dim=1)
        sims = (self.embeddings @ e.T).reshape(-1)
        k = min(k or self.config.top_k, len(self.poses))
        idx = torch.topk(sims, k).indices.tolist()
        return [self.poses[i] for i in idx]
