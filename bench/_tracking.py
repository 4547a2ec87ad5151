"""Tracking runs shared by the bench scripts that track whole procedures (run as ``python
bench/NAME.py``: this folder is on the path): each result kept under a hash of the settings and
the code, so an interrupted bench resumes and a changed tracker runs again."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

KEYS = ("frames", "trans_err_mm_mean", "rot_err_rad_mean", "success_rate", "lost_frames", "wrong_while_tracking")


def settings_hash(cfg_text: str) -> str:
    """12 hex digits of the config's text and the package's source (kept results belong to both)."""
    import bronchopt_ros

    h = hashlib.sha256(cfg_text.encode())
    root = Path(bronchopt_ros.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def track(case: Path, cfg, encoder, results: Path, generations: bool = False) -> dict:
    """The case tracked over every frame (kept in ``results``): :data:`KEYS`, the trachea's mean
    translation error, and with ``generations`` the by-generation summary."""
    from bronchopt_ros.evaluation import summarise, track_case

    key = results / f"{case.name}.json"
    if key.exists():
        out = json.loads(key.read_text())
        if not generations or "by_generation" in out:
            return out
    records, _, tracker = track_case(case, cfg, encoder=encoder, progress=False)
    tracker.close()
    m = summarise(records)
    out = {k: m[k] for k in KEYS}
    out["trachea_trans_mm"] = m.get("by_generation", {}).get("trachea", {}).get("trans_err_mm_mean")
    out["by_generation"] = m.get("by_generation", {})
    key.write_text(json.dumps(out))
    return out


def pooled(rows: list[dict]) -> dict:
    """Frame-weighted means over the cases (counts summed)."""
    n = sum(r["frames"] for r in rows)
    out = {"frames": n, "cases": len(rows)}
    for k in ("trans_err_mm_mean", "rot_err_rad_mean", "success_rate"):
        out[k] = sum(r[k] * r["frames"] for r in rows) / max(n, 1)
    for k in ("lost_frames", "wrong_while_tracking"):
        out[k] = sum(r[k] for r in rows)
    out["failed_cases"] = sum(r["success_rate"] < 0.95 for r in rows)
    return out
