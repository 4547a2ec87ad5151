"""Relocalisation index: global embeddings of depth views rendered along the centerline.

Built once per airway (lazily, on the first query or :meth:`LazyIndex.warm`, so that runs which
never get lost do not pay for it): poses every ``spacing`` along every branch, looking down the
branch, at several rolls; the encoder's global embedding of each rendered depth map is stored
(embedded in batches of ``batch``). A lost frame's RGB embedding is compared with all of them (cosine), and the poses of the
best matches are the relocalisation candidates the tracker refines.

Building takes ~35 s for a six-generation airway on two cores, so the index can be kept on disk
(``cache_dir``): one file per airway, encoder weights, index settings and camera, named by a hash
of all of them (:func:`index_key`); a later run with the same inputs loads it in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .geometry import Camera, Pose
from .registration import centerline_hypotheses

__all__ = ["RelocConfig", "RelocalisationIndex", "LazyIndex", "index_key"]

log = logging.getLogger(__name__)


@dataclass
class RelocConfig:
    spacing: float = 0.003  # m between indexed positions along a branch
    rolls: int = 6  # rolls per position (evenly over 360 deg)
    width: int = 48  # render width of the indexed views
    top_k: int = 8  # candidates returned per query
    max_generation: int = 6  # index branches up to this generation
    batch: int = 64  # views embedded per encoder call


class RelocalisationIndex:
    def __init__(self, poses: list[Pose], embeddings: torch.Tensor, config: RelocConfig, build_s: float = 0.0):
        self.poses = poses
        self.embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
        self.config = config
        self.build_s = build_s

    @classmethod
    def build(cls, renderer, encoder, centerline, camera: Camera, config: RelocConfig | None = None,
              should_stop=None):
        """Render and embed the views; ``should_stop()`` (optional) is polled between views and
        aborts the build with ``InterruptedError``."""
        cfg = config or RelocConfig()
        t0 = time.perf_counter()
        cam = camera.scaled(cfg.width, max(1, round(cfg.width * camera.height / camera.width)))
        rolls = tuple(np.linspace(0, 2 * np.pi, cfg.rolls, endpoint=False))
        poses, depths, valids, embs = [], [], [], []

        def flush():
            if depths:
                with torch.no_grad():
                    embs.append(encoder.embed_depth(torch.stack(depths), torch.stack(valids)).reshape(len(depths), -1).float())
                depths.clear()
                valids.clear()

        for b in centerline.branches:
            if b.generation > cfg.max_generation:
                continue
            from .airway.centerline import Centerline

            sub = Centerline([b])
            # Every point of this branch: a huge radius around its own midpoint.
            for p in centerline_hypotheses(sub, Pose(np.eye(3), b.points[len(b.points) // 2]), radius=1.0,
                                           spacing=cfg.spacing, rolls=rolls):
                if should_stop is not None and should_stop():
                    raise InterruptedError("relocalisation index build cancelled")
                out = renderer.render(cam, p, normals=False)
                if not out.inside or out.valid_fraction < 0.5:
                    continue
                depths.append(torch.as_tensor(out.depth, dtype=torch.float32))
                valids.append(torch.as_tensor(out.valid).bool())
                poses.append(p)
                if len(depths) >= cfg.batch:
                    flush()
        flush()
        if not embs:
            raise ValueError("relocalisation index: no view along the centerline could be rendered")
        return cls(poses, torch.cat(embs), cfg, time.perf_counter() - t0)

    def __len__(self) -> int:
        return len(self.poses)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (.npz; atomically, so a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        mats = np.stack([p.matrix for p in self.poses]) if self.poses else np.zeros((0, 4, 4))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, poses=mats, embeddings=self.embeddings.numpy().astype(np.float32),
                         config=json.dumps(asdict(self.config)), build_s=self.build_s)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> "RelocalisationIndex":
        """Read an index written by :meth:`save`; ``ValueError`` if the file is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                mats, emb = z["poses"], z["embeddings"]
                config = RelocConfig(**json.loads(str(z["config"])))
                build_s = float(z["build_s"])
        except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a relocalisation index: {path}: {exc}") from exc
        if mats.ndim != 3 or mats.shape[1:] != (4, 4) or emb.ndim != 2 or len(emb) != len(mats) or not len(mats):
            raise ValueError(f"not a relocalisation index: {path}: poses {mats.shape}, embeddings {emb.shape}")
        return cls([Pose.from_matrix(m) for m in mats], torch.from_numpy(emb), config, build_s)

    def query(self, embedding: torch.Tensor, k: int | None = None) -> list[Pose]:
        """Poses of the ``k`` indexed views most similar to ``embedding`` (best first)."""
        e = torch.nn.functional.normalize(embedding.reshape(1, -1).float(), dim=1)
        sims = (self.embeddings @ e.T).reshape(-1)
        k = min(k or self.config.top_k, len(self.poses))
        idx = torch.topk(sims, k).indices.tolist()
        return [self.poses[i] for i in idx]


def index_key(airway, encoder_id: str, camera: Camera, config: RelocConfig | None = None) -> str:
    """Hex digest naming an index: the airway (mesh and centerline), the encoder (e.g. its
    weights' hash), the camera and the index settings. Any change gives another key (so a stale
    index is never loaded)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(airway.vertices, np.float64).tobytes())
    h.update(np.ascontiguousarray(airway.faces, np.int64).tobytes())
    for b in getattr(airway.centerline, "branches", []):
        h.update(np.ascontiguousarray(b.points, np.float64).tobytes())
    h.update(json.dumps([encoder_id, [camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy],
                         asdict(config or RelocConfig())]).encode())
    return h.hexdigest()[:24]


class LazyIndex:
    """A :class:`RelocalisationIndex` built on first use (thread-safe); ``warm()`` builds it now
    (the node calls it from a background thread after loading a mesh). With ``cache`` (a file
    path, e.g. ``cache_dir / f"{index_key(...)}.npz"``) it is loaded from there when present and
    written there after a build."""

    def __init__(self, renderer, encoder, centerline, camera: Camera, config: RelocConfig | None = None,
                 cache: str | Path | None = None):
        import threading

        self._args = (renderer, encoder, centerline, camera, config)
        self.cache = Path(cache) if cache else None
        self.loaded_from_cache = False
        self._index: RelocalisationIndex | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Abort a build in progress (e.g. at shutdown); later queries return nothing."""
        self._cancel.set()

    def _from_cache(self) -> "RelocalisationIndex | None":
        if self.cache is None or not self.cache.exists():
            return None
        try:
            index = RelocalisationIndex.load(self.cache)
        except ValueError as exc:
            log.warning("relocalisation index cache unreadable, rebuilding: %s", exc)
            return None
        self.loaded_from_cache = True
        log.info("relocalisation index: %d views loaded from %s", len(index), self.cache)
        return index

    def warm(self) -> "RelocalisationIndex | None":
        with self._lock:
            if self._index is None and self._error is None:
                self._index = self._from_cache()
                if self._index is not None:
                    return self._index
                try:
                    self._index = RelocalisationIndex.build(*self._args, should_stop=self._cancel.is_set)
                    log.info("relocalisation index: %d views in %.1f s", len(self._index), self._index.build_s)
                except InterruptedError as exc:
                    self._error = str(exc)
                    return None
                except (ValueError, AttributeError) as exc:
                    self._error = str(exc)
                    log.warning("relocalisation index not built: %s", exc)
                    return None
                if self.cache is not None:
                    try:
                        self._index.save(self.cache)
                    except OSError as exc:  # a read-only or full disk: keep the index in memory
                        log.warning("relocalisation index not cached to %s: %s", self.cache, exc)
            return self._index

    @property
    def ready(self) -> bool:
        return self._index is not None

    def query(self, embedding: torch.Tensor, k: int | None = None) -> list[Pose]:
        index = self.warm()
        return [] if index is None else index.query(embedding, k)
