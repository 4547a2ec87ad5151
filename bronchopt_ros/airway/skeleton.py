"""Airway centerline from a segmentation mask or a lumen mesh (for users' data).

mask -> 3-D skeleton (:func:`skimage.morphology.skeletonize`) -> voxel graph (networkx,
26-neighbourhood) -> shortest-path tree from the root (the top-most wide skeleton end: the
trachea's open end) -> branches between junctions -> pruning of short spurs -> smoothed,
resampled :class:`~bronchopt_ros.airway.centerline.Centerline` in metres, with radii from the
distance transform of the mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .centerline import Branch, Centerline

__all__ = ["SkeletonParams", "centerline_from_mask", "centerline_from_mesh"]


@dataclass
class SkeletonParams:
    """How the skeleton becomes a centerline."""

    min_branch_mm: float = 4.0  # leaf branches shorter than this are spurs ...
    spur_radius_factor: float = 1.5  # ... or shorter than this x the radius where they leave
    smooth_mm: float = 1.5  # Gaussian smoothing of the voxel polyline (sigma, along the branch)
    spacing_mm: float = 1.0  # output point spacing
    fill_holes: bool = True  # fill internal cavities (they would make skeleton loops)


def centerline_from_mask(mask: np.ndarray, affine: np.ndarray,
                         params: SkeletonParams | None = None) -> Centerline:
    """Centerline (metres, the affine's frame mm -> m) of a boolean airway mask.

    ``affine`` maps voxel indices to the CT frame in millimetres. The root branch starts at the
    top-most (largest CT z) end of the skeleton among the wide ones: the trachea's open end.
    """
    from skimage.morphology import skeletonize

    p = params or SkeletonParams()
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("centerline_from_mask: the mask is empty")
    A = np.asarray(affine, dtype=np.float64)
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(0) - 1, 0)
    hi = np.minimum(nz.max(0) + 2, mask.shape)
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if p.fill_holes:
        sub = ndimage.binary_fill_holes(sub)
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    skel = skeletonize(sub).astype(bool)
    vox = np.argwhere(skel)
    if len(vox) < 2:
        raise ValueError("centerline_from_mask: the skeleton has fewer than 2 voxels")
    # Radius: distance to the nearest voxel just outside the mask (what the Euclidean distance
    # transform gives, but only for the skeleton voxels), less half a voxel.
    shell = np.argwhere(ndimage.binary_dilation(sub) & ~sub)
    dist, _ = cKDTree(shell @ A[:3, :3].T).query(vox @ A[:3, :3].T)
    radius = np.maximum(dist - 0.5 * spacing.min(), 0.5 * spacing.min())
    xyz = (vox + lo) @ A[:3, :3].T + A[:3, 3]

    graph = _voxel_graph(vox, sub.shape, A[:3, :3])
    root = _pick_root(graph, xyz, radius)
    segs = _tree_segments(graph, root)
    segs = _prune(segs, xyz, radius, p)
    return _to_centerline(segs, xyz, radius, p)


def centerline_from_mesh(vertices: np.ndarray, faces: np.ndarray, pitch_mm: float = 0.5,
                         units: str = "m", params: SkeletonParams | None = None) -> Centerline:
    """Centerline (metres) of a closed lumen mesh, via voxelisation at ``pitch_mm``.

    ``vertices`` are in ``units`` (the project's default metres)."""
    import trimesh

    from .mesh import UNIT_SCALE

    v_mm = np.asarray(vertices, dtype=np.float64) * (UNIT_SCALE[units] * 1e3)
    mesh = trimesh.Trimesh(v_mm, np.asarray(faces), process=False)
    grid = mesh.voxelized(pitch_mm).fill()
    return centerline_from_mask(np.asarray(grid.matrix, dtype=bool), np.asarray(grid.transform), params)


# ----------------------------------------------------------------------------- internals


def _voxel_graph(vox: np.ndarray, shape: tuple, M: np.ndarray):
    """26-neighbourhood graph of skeleton voxels, edges weighted by their length in mm."""
    import networkx as nx

    lin = np.ravel_multi_index(vox.T, shape)
    order = np.argsort(lin)
    lin_sorted = lin[order]
    g = nx.Graph()
    g.add_nodes_from(range(len(vox)))
    offsets = [np.array(o) - 1 for o in np.ndindex(3, 3, 3)]
    offsets = [o for o in offsets if tuple(o) > (0, 0, 0)]  # 13 forward neighbours
    for o in offsets:
        nb = vox + o
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        nl = np.ravel_multi_index(nb[ok].T, shape)
        pos = np.searchsorted(lin_sorted, nl)
        pos = np.minimum(pos, len(lin_sorted) - 1)
        hit = lin_sorted[pos] == nl
        src = np.flatnonzero(ok)[hit]
        dst = order[pos[hit]]
        w = float(np.linalg.norm(M @ o))
        g.add_edges_from(zip(src.tolist(), dst.tolist()), weight=w)
    return g


def _pick_root(graph, xyz: np.ndarray, radius: np.ndarray) -> int:
    """The skeleton end with the largest z among the wide ones, in the largest component."""
    import networkx as nx

    comp = max(nx.connected_components(graph), key=lambda c: radius[list(c)].sum())
    nodes = np.array(sorted(comp))
    ends = np.array([n for n in nodes if graph.degree[n] <= 1])
    cand = ends if len(ends) else nodes
    wide = cand[radius[cand] >= 0.5 * radius[nodes].max()]
    if len(wide) == 0:
        wide = cand
    return int(wide[np.argmax(xyz[wide, 2])])


def _tree_segments(graph, root: int) -> list[dict]:
    """Shortest-path tree from ``root`` cut into segments between junctions.

    Each segment: ``nodes`` (list, starting at its parent's last node), ``parent`` (index or -1),
    ``children`` (list of indices)."""
    import networkx as nx

    pred, _ = nx.dijkstra_predecessor_and_distance(graph, root, weight="weight")
    children: dict[int, list[int]] = {n: [] for n in pred}
    for n, ps in pred.items():
        if ps:
            children[ps[0]].append(n)
    segs: list[dict] = []
    stack = [(root, -1, [])]  # (start node, parent segment, leading nodes)
    while stack:
        node, parent, lead = stack.pop()
        nodes = lead + [node]
        while len(children[node]) == 1:
            node = children[node][0]
            nodes.append(node)
        idx = len(segs)
        segs.append({"nodes": nodes, "parent": parent, "children": []})
        if parent >= 0:
            segs[parent]["children"].append(idx)
        for c in children[node]:
            stack.append((c, idx, [node]))
    return segs


def _seg_length(seg: dict, xyz: np.ndarray) -> float:
    pts = xyz[seg["nodes"]]
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def _prune(segs: list[dict], xyz: np.ndarray, radius: np.ndarray, p: SkeletonParams) -> list[dict]:
    """Remove short leaf spurs repeatedly and merge segments left with a single child."""
    alive = [True] * len(segs)
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(segs):
            if not alive[i] or s["parent"] < 0 or s["children"]:
                continue
            r_join = radius[s["nodes"][0]]
            if _seg_length(s, xyz) < max(p.min_branch_mm, p.spur_radius_factor * r_join):
                alive[i] = False
                segs[s["parent"]]["children"].remove(i)
                changed = True
        for i, s in enumerate(segs):
            if alive[i] and len(s["children"]) == 1:
                c = s["children"][0]
                cs = segs[c]
                s["nodes"] = s["nodes"] + cs["nodes"][1:]
                s["children"] = cs["children"]
                for g in cs["children"]:
                    segs[g]["parent"] = i
                alive[c] = False
                changed = True
    keep = [i for i in range(len(segs)) if alive[i]]
    # Renumber breadth-first from the root.
    root = next(i for i in keep if segs[i]["parent"] < 0)
    order, queue = [], [root]
    while queue:
        i = queue.pop(0)
        order.append(i)
        queue += segs[i]["children"]
    new_id = {old: k for k, old in enumerate(order)}
    out = []
    for old in order:
        s = segs[old]
        out.append({"nodes": s["nodes"], "parent": new_id.get(s["parent"], -1),
                    "children": [new_id[c] for c in s["children"]]})
    return out


def _smooth_resample(pts: np.ndarray, rad: np.ndarray, p: SkeletonParams) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter1d

    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    n = max(2, int(np.ceil(s[-1] / p.spacing_mm)) + 1)
    si = np.linspace(0.0, s[-1], n)
    q = np.stack([np.interp(si, s, pts[:, k]) for k in range(3)], axis=1)
    r = np.interp(si, s, ndimage.median_filter(rad, size=min(5, len(rad)), mode="nearest"))
    sigma = p.smooth_mm / p.spacing_mm
    if n > 3 and sigma > 0:
        start, end = q[0].copy(), q[-1].copy()
        q = gaussian_filter1d(q, sigma, axis=0, mode="nearest")
        q[0], q[-1] = start, end  # keep the junctions where they are
    return q, r


def _to_centerline(segs: list[dict], xyz: np.ndarray, radius: np.ndarray, p: SkeletonParams) -> Centerline:
    branches: list[Branch] = []
    gen = {}
    for k, s in enumerate(segs):
        nodes = s["nodes"]
        if len(nodes) < 2:
            nodes = nodes + nodes
        pts, rad = _smooth_resample(xyz[nodes], radius[nodes], p)
        if s["parent"] >= 0:
            pts[0] = branches[s["parent"]].points[-1] * 1e3
        gen[k] = 0 if s["parent"] < 0 else gen[s["parent"]] + 1
        branches.append(Branch(k, s["parent"], gen[k], pts * 1e-3, rad * 1e-3))
    return Centerline(branches)
