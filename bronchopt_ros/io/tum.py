"""TUM trajectory files: one line per pose, ``t x y z qx qy qz qw``.

``t`` is a stamp in seconds, ``x y z`` the camera centre in the ``ct`` frame (metres) and
``qx qy qz qw`` the camera-to-CT rotation (ROS order), i.e. exactly :meth:`Pose.to_tum`.
Lines starting with ``#`` and blank lines are ignored when reading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..geometry import Pose

__all__ = ["TumFormatError", "read_tum", "write_tum", "stamps_to_ns"]


class TumFormatError(ValueError):
    """A TUM file line that cannot be parsed (the message names the file and line)."""


def read_tum(path: str | Path) -> tuple[np.ndarray, list[Pose]]:
    """Read a TUM file. Returns ``(stamps_s (N,) float64, poses)`` in file order.

    Raises :class:`TumFormatError` for a line without 8 numbers, with non-finite values or with a
    zero quaternion (non-unit quaternions are normalised).
    """
    path = Path(path)
    stamps, poses = [], []
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.replace(",", " ").split()
            try:
                vals = np.array([float(v) for v in parts], dtype=np.float64)
            except ValueError as exc:
                raise TumFormatError(f"{path}:{lineno}: not a number in '{s}'") from exc
            if vals.size != 8:
                raise TumFormatError(f"{path}:{lineno}: expected 8 values (t x y z qx qy qz qw), got {vals.size}")
            if not np.all(np.isfinite(vals)):
                raise TumFormatError(f"{path}:{lineno}: non-finite value")
            try:
                poses.append(Pose.from_tum(vals[1:]))
            except ValueError as exc:
                raise TumFormatError(f"{path}:{lineno}: {exc}") from exc
            stamps.append(vals[0])
    return np.asarray(stamps, dtype=np.float64), poses


def write_tum(path: str | Path, stamps_s: Sequence[float] | np.ndarray, poses: Iterable[Pose],
              header: str | None = None) -> Path:
    """Write poses with their stamps as a TUM file; ``header`` lines get a ``#``.

    ``stamps_s`` are seconds (float); an *integer* array is taken as nanoseconds and written
    exactly. Stamps, positions and quaternions are written with 9 decimals.
    """
    path = Path(path)
    poses = list(poses)
    stamps = np.asarray(stamps_s).reshape(-1)
    if len(stamps) != len(poses):
        raise ValueError(f"write_tum: {len(stamps)} stamps for {len(poses)} poses")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if header:
        lines += [f"# {h}" for h in header.splitlines()]
    for t, p in zip(stamps, poses):
        lines.append(_format_stamp(t) + " " + " ".join(f"{v:.9f}" for v in p.to_tum()))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stamps_to_ns(stamps_s: Sequence[float] | np.ndarray) -> np.ndarray:
    """Seconds (float) -> integer nanoseconds, rounded (TUM stamps keep ~0.2 us at epoch scale)."""
    return np.round(np.asarray(stamps_s, dtype=np.float64) * 1e9).astype(np.int64)


def _format_stamp(t) -> str:
    if isinstance(t, (np.integer, int)):
        t = int(t)
        sign = "-" if t < 0 else ""
        return f"{sign}{abs(t) // 1_000_000_000}.{abs(t) % 1_000_000_000:09d}"
    return f"{float(t):.9f}"
