"""The airway centerline as a branch graph.

A ``Centerline`` is a tree of ``Branch`` es: branch 0 (or every branch with
``parent == -1``) is the trachea, listed from its open (mouth-side) end down to
the carina; every other branch starts at its parent's end. Points and radii are
in metres in the ``ct`` frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Branch", "Centerline"]


@dataclass
class Branch:
    id: int
    parent: int  # -1 for the root (trachea)
    generation: int  # 0 trachea, 1 main bronchi, ...
    points: np.ndarray  # (N, 3) metres, ordered away from the trachea's open end
    radii: np.ndarray  # (N,) lumen radius at each point, metres

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        self.radii = np.asarray(self.radii, dtype=np.float64).reshape(-1)
        if len(self.points) < 2 or len(self.radii) != len(self.points):
            raise ValueError(f"Branch {self.id}: needs >= 2 points and one radius per point")

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())


@dataclass
class Centerline:
    branches: list[Branch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {b.id: b for b in self.branches}

    def __len__(self) -> int:
        return len(self.branches)

    def branch(self, branch_id: int) -> Branch:
        return self._by_id[branch_id]

    @property
    def root(self) -> Branch:
        return next(b for b in self.branches if b.parent < 0)

    def children(self, branch_id: int) -> list[Branch]:
        return [b for b in self.branches if b.parent == branch_id]

    def leaves(self) -> list[Branch]:
        parents = {b.parent for b in self.branches}
        return [b for b in self.branches if b.id not in parents]

    def lineage(self, branch_id: int) -> list[Branch]:
        """Branches from the root down to ``branch_id``."""
        out = []
        b = self._by_id[branch_id]
        while True:
            out.append(b)
            if b.parent < 0:
                break
            b = self._by_id[b.parent]
        return out[::-1]

    def path_to(self, branch_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated centerline points and radii from the trachea's open end to the end of
        ``branch_id`` (duplicate junction points removed)."""
        pts, rad = [], []
        for i, b in enumerate(self.lineage(branch_id)):
            s = 0 if i == 0 else 1
            pts.append(b.points[s:])
            rad.append(b.radii[s:])
        return np.concatenate(pts), np.concatenate(rad)

    def all_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All samples: points (M, 3), radii (M,), branch id (M,)."""
        p = np.concatenate([b.points for b in self.branches])
        r = np.concatenate([b.radii for b in self.branches])
        i = np.concatenate([np.full(len(b.points), b.id) for b in self.branches])
        return p, r, i

    def generation_at(self, points: np.ndarray) -> np.ndarray:
        """The generation (0: trachea) of the branch whose centerline passes nearest to each of
        ``points`` (N, 3); -1 for all when the centerline is empty."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if not self.branches:
            return np.full(len(pts), -1, dtype=np.int64)
        from scipy.spatial import cKDTree

        samples, _, ids = self.all_points()
        gen = np.array([self._by_id[int(i)].generation for i in ids], dtype=np.int64)
        _, nearest = cKDTree(samples).query(pts)
        return gen[nearest]

    def to_networkx(self):
        import networkx as nx

        g = nx.DiGraph()
        for b in self.branches:
            g.add_node(b.id, generation=b.generation, length=b.length)
            if b.parent >= 0:
                g.add_edge(b.parent, b.id)
        return g

    def to_dict(self) -> dict:
        return {"branches": [{"id": b.id, "parent": b.parent, "generation": b.generation,
                              "points": b.points.tolist(), "radii": b.radii.tolist()} for b in self.branches]}

    @classmethod
    def from_dict(cls, d: dict) -> "Centerline":
        return cls([Branch(b["id"], b["parent"], b["generation"], np.array(b["points"]), np.array(b["radii"]))
                    for b in d["branches"]])
