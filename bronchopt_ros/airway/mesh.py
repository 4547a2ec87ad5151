"""The airway surface in the ``ct`` frame, in metres, and its loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .centerline import Centerline

__all__ = ["Airway", "MeshUnitsError", "load_airway", "UNIT_SCALE"]

UNIT_SCALE = {"m": 1.0, "cm": 1e-2, "mm": 1e-3}


class MeshUnitsError(ValueError):
    """The mesh's size is implausible for an airway in the declared unit."""


@dataclass
class Airway:
    """Lumen surface (``vertices`` metres, ``faces`` int) and optionally its centerline."""

    vertices: np.ndarray
    faces: np.ndarray
    centerline: Centerline | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)

    @property
    def extent(self) -> float:
        """Largest bounding-box side, metres."""
        return float(np.ptp(self.vertices, axis=0).max()) if len(self.vertices) else 0.0

    def to_trimesh(self, units: str = "m"):
        import trimesh

        return trimesh.Trimesh(self.vertices / UNIT_SCALE[units], self.faces, process=False)

    def check(self) -> "Airway":
        """Raise a clear error for an empty mesh or one whose size is not that of an airway."""
        if len(self.faces) == 0 or len(self.vertices) < 3:
            raise ValueError("airway mesh has no triangles")
        if not np.all(np.isfinite(self.vertices)):
            raise ValueError("airway mesh has non-finite vertices")
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise ValueError("airway mesh has face indices out of range")
        ext = self.extent
        # A bronchial tree, or even a short segment of one, spans 1 cm to 60 cm.
        if not 0.005 <= ext <= 0.6:
            raise MeshUnitsError(
                f"airway mesh spans {ext * 1000:.3g} mm after unit conversion; expected 5-600 mm: "
                "is the `mesh_units` parameter right (mm, cm or m)?")
        return self


def load_airway(path: str | Path, units: str = "mm", threshold_hu: float | None = None,
                label: int | None = None) -> Airway:
    """Load an airway surface from STL/PLY/OBJ (or a NIfTI CT/label volume, see
    :func:`bronchopt_ros.airway.ct.mesh_from_nifti`, which reads ``threshold_hu`` / ``label``
    and the NIfTI affine's millimetres) and convert ``units`` to metres."""
    path = Path(path)
    if units not in UNIT_SCALE:
        raise ValueError(f"unknown mesh unit '{units}' (use one of {sorted(UNIT_SCALE)})")
    if not path.exists():
        raise FileNotFoundError(f"airway mesh not found: {path}")
    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        from .ct import mesh_from_nifti

        return mesh_from_nifti(path, threshold_hu=threshold_hu, label=label)
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=True)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise ValueError(f"cannot read airway mesh {path}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"airway mesh {path} has no triangles")
    return Airway(np.asarray(mesh.vertices) * UNIT_SCALE[units], np.asarray(mesh.faces)).check()
