"""Load an airway for the airway server: the surface and its centerline.

The surface comes from :func:`bronchopt_ros.airway.mesh.load_airway` (mesh files) or the CT path
(:func:`bronchopt_ros.airway.ct.mesh_from_nifti`). The centerline comes from, in order: an explicit
JSON file, a sidecar ``<mesh>.centerline.json`` (written by ``bronchopt sim``), the CT's mask, or a
skeleton of the voxelised mesh.
"""
from __future__ import annotations

import json
from pathlib import Path

from .centerline import Centerline
from .mesh import Airway, load_airway

__all__ = ["load_airway_with_centerline", "sidecar_path", "save_centerline"]


def sidecar_path(mesh_path: str | Path) -> Path:
    p = Path(mesh_path)
    return p.with_name(p.name + ".centerline.json")


def save_centerline(centerline: Centerline, path: str | Path) -> None:
    Path(path).write_text(json.dumps(centerline.to_dict()))


def load_airway_with_centerline(path: str | Path, units: str = "mm", threshold_hu: float | None = None,
                                label: int | None = None, centerline_path: str | Path | None = None,
                                compute: bool = True) -> Airway:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"airway file not found: {path}")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from .ct import mesh_from_nifti

        airway = mesh_from_nifti(path, threshold_hu=threshold_hu, label=label)
    else:
        airway = load_airway(path, units=units)
    cl_file = Path(centerline_path) if centerline_path else sidecar_path(path)
    if centerline_path and not cl_file.exists():
        raise FileNotFoundError(f"centerline file not found: {cl_file}")
    if cl_file.exists():
        try:
            airway.centerline = Centerline.from_dict(json.loads(cl_file.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read centerline {cl_file}: {exc}") from exc
    elif compute:
        from .skeleton import centerline_from_mesh

        airway.centerline = centerline_from_mesh(airway.vertices, airway.faces)
    return airway
