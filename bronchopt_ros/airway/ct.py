"""CT volume -> airway segmentation -> lumen surface mesh.

Used for users' NIfTI files (a CT in Hounsfield units, or an airway label map) and for the
synthetic CTs of :mod:`bronchopt_ros.sim`, so both take exactly the same path:

* :func:`load_ct` reads a NIfTI file into a :class:`CTVolume` (voxel data + voxel->mm affine).
* :func:`segment_airway` thresholds the air (``HU < threshold_hu``) and keeps the connected
  component of the trachea (found from the top slices, or given as a seed point), then grows
  its boundary by a voxel or two into partial-volume voxels; or, for a label map, keeps the
  largest connected component of the label.
* :func:`mesh_from_mask` runs marching cubes on the (zero-padded, so closed) mask, or on the
  CT's isosurface held to the mask's boundary, maps the vertices through the affine, smooths
  (Taubin) and optionally decimates. The triangles wind so
  that **normals point out of the lumen** (into the wall): the mesh is a closed surface of
  positive volume, and a camera inside the lumen sees the back of every triangle (what
  :class:`bronchopt_ros.render.raycast.Raycaster` reports as ``facing_away``).
* :func:`mesh_from_nifti` chains them and returns an :class:`~bronchopt_ros.airway.mesh.Airway`
  in metres.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .mesh import Airway

__all__ = ["CTVolume", "load_ct", "segment_airway", "mesh_from_mask", "mesh_from_nifti",
           "is_label_map"]


@dataclass
class CTVolume:
    """A CT (or label) volume: ``hu[i, j, k]`` and the 4x4 affine voxel index -> CT frame, mm."""

    hu: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)
        if self.hu.ndim != 3:
            raise ValueError(f"CT volume must be 3-D, got shape {self.hu.shape}")

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along i, j, k (mm)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def voxel_to_mm(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def mm_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.asarray(xyz, dtype=np.float64)
        A = np.linalg.inv(self.affine)
        return xyz @ A[:3, :3].T + A[:3, 3]

    def save(self, path: str | Path) -> Path:
        """Write a NIfTI file (``.nii`` or ``.nii.gz``)."""
        import nibabel as nib

        path = Path(path)
        img = nib.Nifti1Image(self.hu, self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        nib.save(img, str(path))
        return path


def load_ct(path: str | Path) -> CTVolume:
    """Read a NIfTI volume (CT in HU or a label map). Raises ValueError if unreadable."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CT volume not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for corrupt / foreign files
        raise ValueError(f"cannot read CT volume {path}: {exc}") from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise ValueError(f"CT volume {path} is not 3-D (shape {data.shape})")
    return CTVolume(data, img.affine)


def is_label_map(ct: CTVolume) -> bool:
    """True if the volume looks like a label map (few non-negative integer values), not HU."""
    a = ct.hu
    sample = a[:: max(1, a.shape[0] // 64), :: max(1, a.shape[1] // 64), :: max(1, a.shape[2] // 64)]
    if sample.min() < 0 or a.min() < 0:
        return False
    if not np.issubdtype(a.dtype, np.integer) and not np.all(np.mod(sample, 1) == 0):
        return False
    return len(np.unique(sample)) <= 16 and a.max() < 1000


def _superior_axis(affine: np.ndarray) -> tuple[int, int]:
    """Voxel axis most aligned with the CT frame's +z (superior) and its sign (+1: larger index
    is more superior)."""
    zrow = affine[2, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    ax = int(np.argmax(np.abs(zrow)))
    return ax, (1 if zrow[ax] > 0 else -1)


def _find_trachea_seed(air: np.ndarray, ct: CTVolume, search_mm: float = 60.0) -> tuple | None:
    """A voxel of the trachea: the most central, roughly round, trachea-sized 2-D air region in
    the top-most axial slices."""
    ax, sgn = _superior_axis(ct.affine)
    sp = ct.spacing_mm
    n = air.shape[ax]
    in_plane = [a for a in range(3) if a != ax]
    px_area = sp[in_plane[0]] * sp[in_plane[1]]
    order = range(n - 1, -1, -1) if sgn > 0 else range(n)
    n_search = max(1, int(round(search_mm / sp[ax])))
    for step, s in enumerate(order):
        if step >= n_search:
            break
        sl = np.take(air, s, axis=ax)
        lab, nlab = ndimage.label(sl)
        if nlab == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        areas = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, nlab + 1)) * px_area
        centres = np.array(ndimage.center_of_mass(sl, lab, np.arange(1, nlab + 1)))
        best, best_d = None, np.inf
        mid = (np.array(sl.shape) - 1) / 2
        for i in range(nlab):
            if (i + 1) in border or not (40.0 <= areas[i] <= 1200.0):
                continue
            d = np.linalg.norm((centres[i] - mid) * [sp[in_plane[0]], sp[in_plane[1]]])
            if d < best_d:
                best, best_d = i + 1, d
        if best is not None:
            ij = np.argwhere(lab == best)
            c = ij[np.argmin(np.linalg.norm(ij - centres[best - 1], axis=1))]
            idx = [0, 0, 0]
            idx[ax] = s
            idx[in_plane[0]], idx[in_plane[1]] = int(c[0]), int(c[1])
            return tuple(idx)
    return None


def _largest_component(mask: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """The largest connected component (labelled inside the mask's bounding box only)."""
    nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    box = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)
    lab, nlab = ndimage.label(mask[box], structure=ndimage.generate_binary_structure(3, connectivity))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = lab == int(np.argmax(sizes))
    return out


def segment_airway(ct: CTVolume, threshold_hu: float | None = -900.0, label: int | None = None,
                   seed_mm: np.ndarray | None = None, grow_hu: float | None = -500.0,
                   grow_voxels: int = 2) -> np.ndarray:
    """Boolean mask of the airway lumen.

    With ``label`` (or a volume that :func:`is_label_map` and ``threshold_hu=None``): the largest
    connected component of ``data == label`` (``label=None`` on a label map: any non-zero value).
    Otherwise a CT in HU: voxels below ``threshold_hu`` connected (6-neighbourhood, which resists
    leaks through thin walls) to the trachea, found from ``seed_mm`` (a point in the CT frame,
    mm) or in the top slices. The component is then grown by up to ``grow_voxels`` into
    neighbouring voxels below ``grow_hu`` (the half-way level between air and wall), which puts
    the mask boundary on the lumen's partial-volume edge rather than inside it.
    """
    data = ct.hu
    if label is not None or threshold_hu is None:
        if label is None and not is_label_map(ct):
            raise ValueError("segment_airway: give threshold_hu for a CT in HU (or label for a label map)")
        mask = data != 0 if label is None else data == label
        if not mask.any():
            what = "non-zero voxels" if label is None else f"voxels with label {label}"
            raise ValueError(f"segment_airway: the label map has no {what}")
        return _largest_component(mask)

    air = data < threshold_hu
    if not air.any():
        raise ValueError(f"segment_airway: no voxel below {threshold_hu} HU: is this a CT in HU?")
    six = ndimage.generate_binary_structure(3, 1)
    if seed_mm is not None:
        seed = tuple(int(v) for v in np.round(ct.mm_to_voxel(np.asarray(seed_mm, float))))
        if not all(0 <= s < n for s, n in zip(seed, data.shape)) or not air[seed]:
            raise ValueError(f"segment_airway: the seed point {np.round(seed_mm, 1)} mm is not in air "
                             f"(below {threshold_hu} HU) inside the volume")
    else:
        seed = _find_trachea_seed(air, ct)
        if seed is None:
            raise ValueError("segment_airway: found no trachea-like air region in the top slices "
                             f"(threshold {threshold_hu} HU); pass seed_mm or a label map")
    from skimage.segmentation import flood

    mask = flood(air, seed, connectivity=1)  # visits the component only; 6-neighbourhood
    if grow_hu is not None and grow_voxels > 0:
        allowed = data < grow_hu
        mask = ndimage.binary_dilation(mask, structure=six, iterations=grow_voxels, mask=allowed)
    return mask


def mesh_from_mask(mask: np.ndarray, affine: np.ndarray, smooth_iterations: int = 10,
                   max_faces: int | None = None, sigma_voxels: float | None = None,
                   intensity: np.ndarray | None = None, level_hu: float = -500.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed lumen surface of a boolean mask, vertices in the affine's frame (mm).

    Marching cubes on a zero-padded field, so the surface is closed even where the mask touches
    the volume's border: the Gaussian-smoothed (``sigma_voxels``, default 1) mask at level 0.5
    (the smoothing removes most of a label map's staircase), or, given
    the CT ``intensity`` (HU, same grid), its ``level_hu`` isosurface (smoothed the same way)
    (``sigma_voxels`` default 0.5) kept on the mask's boundary: mask voxels count as inside and all others as outside, and
    the HU values only place the surface between them, to sub-voxel precision and without the
    staircase of a binary mask. Then Taubin smoothing (``smooth_iterations``) and, above
    ``max_faces``, quadric decimation if ``fast_simplification`` is installed. Faces are wound
    with normals out of the lumen.
    """
    import trimesh
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("mesh_from_mask: the segmentation is empty")
    # Crop to the mask's bounding box (+ margin for the padding and the blur).
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(0) - 2, 0)
    hi = np.minimum(nz.max(0) + 3, mask.shape)
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if sigma_voxels is None:
        sigma_voxels = 1.0 if intensity is None else 0.5
    if intensity is None:
        field = np.pad(sub.astype(np.float32), 3)
        if sigma_voxels > 0:
            field = ndimage.gaussian_filter(field, sigma_voxels, truncate=3.0)
        level = 0.5
    else:  # (in place, to keep the memory at ~5 bytes per voxel of the mask's bounding box)
        field = np.full(tuple(n + 6 for n in sub.shape), level_hu + 500.0, dtype=np.float32)
        field[3:-3, 3:-3, 3:-3] = intensity[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if sigma_voxels > 0:
            ndimage.gaussian_filter(field, sigma_voxels, truncate=3.0, output=field)
        field -= np.float32(level_hu)
        field *= np.float32(-1.0 / 500.0)  # > 0 inside the lumen
        np.clip(field, -1.0, 1.0, out=field)
        inside = np.pad(sub, 3)
        np.maximum(field, np.float32(0.02), out=field, where=inside)
        np.logical_not(inside, out=inside)
        np.minimum(field, np.float32(-0.02), out=field, where=inside)
        del inside
        level = 0.0
    try:
        verts, faces, _, _ = marching_cubes(field, level=level, allow_degenerate=False)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"mesh_from_mask: marching cubes failed: {exc}") from exc
    verts = verts + (lo - 3)  # back to voxel indices of the full volume
    A = np.asarray(affine, dtype=np.float64)
    verts = verts @ A[:3, :3].T + A[:3, 3]
    mesh = trimesh.Trimesh(verts, faces, process=True)
    if smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=smooth_iterations)
    if max_faces is not None and len(mesh.faces) > max_faces:
        try:
            mesh = mesh.simplify_quadric_decimation(face_count=max_faces)
        except (ImportError, ModuleNotFoundError):
            pass  # no decimator installed: keep the full mesh
    # Normals out of the lumen: a closed surface then has positive volume.
    if mesh.volume < 0:
        mesh.invert()
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def mesh_from_nifti(path: str | Path, threshold_hu: float | None = None, label: int | None = None,
                    smooth_iterations: int = 10, max_faces: int | None = 400_000) -> Airway:
    """Airway lumen mesh (metres) from a NIfTI CT (HU) or airway label map.

    With neither ``threshold_hu`` nor ``label``, a label map (few non-negative integer values)
    uses its non-zero voxels and a CT the threshold -900 HU.
    """
    ct = load_ct(path)
    if label is None and threshold_hu is None:
        threshold_hu = None if is_label_map(ct) else -900.0
    try:
        mask = segment_airway(ct, threshold_hu=threshold_hu, label=label)
        hu = ct.hu if (label is None and threshold_hu is not None) else None
        verts, faces = mesh_from_mask(mask, ct.affine, smooth_iterations=smooth_iterations,
                                      max_faces=max_faces, intensity=hu)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return Airway(verts * 1e-3, faces).check()
