"""Contact sheet of a case's frames: a PNG grid of evenly spaced images with their index, time
and (when the bag has it) the ground-truth branch depth, for a quick look at a case."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["contact_sheet"]


def contact_sheet(case_dir: str | Path, out: str | Path | None = None, n: int = 16, cols: int = 4,
                  tile: int = 200) -> Path:
    """Write a contact sheet of ``n`` evenly spaced frames of the case's bag to ``out``
    (default ``<case>/preview.png``). Accepts a case folder or a bag folder. Returns the path.

    Raises ``FileNotFoundError`` when there is no bag and ``ValueError`` when it has no images.
    """
    import cv2

    from ..io.bag import read_case_bag

    case_dir = Path(case_dir)
    bag = case_dir / "procedure" if (case_dir / "procedure").exists() else case_dir
    if not bag.exists():
        raise FileNotFoundError(f"no bag at {bag}")
    stamps = [e.stamp_ns for e in read_case_bag(bag, decode_images=False) if e.kind == "image"]
    if not stamps:
        raise ValueError(f"{bag} holds no images")
    stamps = sorted(set(stamps))
    pick = sorted(set(np.linspace(0, len(stamps) - 1, min(n, len(stamps))).round().astype(int).tolist()))
    wanted = {stamps[i]: i for i in pick}
    frames: dict[int, np.ndarray] = {}
    for e in read_case_bag(bag):
        if e.kind == "image" and e.stamp_ns in wanted and e.stamp_ns not in frames:
            frames[e.stamp_ns] = e.data
    t0 = stamps[0]
    tiles = []
    for s in sorted(frames):
        img = cv2.resize(frames[s], (tile, int(round(tile * frames[s].shape[0] / frames[s].shape[1]))),
                         interpolation=cv2.INTER_AREA)
        img = np.ascontiguousarray(img[..., ::-1])  # to BGR for cv2
        label = f"#{wanted[s]}  {(s - t0) * 1e-9:.2f}s"
        cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    cols = max(1, min(cols, len(tiles)))
    h, w = tiles[0].shape[:2]
    while len(tiles) % cols:
        tiles.append(np.zeros((h, w, 3), np.uint8))
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    sheet = np.vstack(rows)
    out = Path(out) if out is not None else (case_dir / "preview.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet):
        raise OSError(f"cannot write {out}")
    return out
