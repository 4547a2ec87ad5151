"""Figures of an evaluation run (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trajectory(path: str | Path, airway, records) -> None:
    """Estimate vs truth over the airway, two projections (coronal x-z, sagittal y-z), mm."""
    plt = _plt()
    v = airway.vertices[:: max(1, len(airway.vertices) // 20000)] * 1e3
    est = np.array([r.pose.t for r in records if r.pose is not None]) * 1e3
    gt = np.array([r.truth.t for r in records if r.truth is not None]) * 1e3
    fig, axes = plt.subplots(1, 2, figsize=(11, 6))
    for ax, (i, j, name) in zip(axes, [(0, 2, "coronal (x-z)"), (1, 2, "sagittal (y-z)")]):
        ax.scatter(v[:, i], v[:, j], s=0.2, c="0.8", rasterized=True)
        if len(gt):
            ax.plot(gt[:, i], gt[:, j], "k-", lw=1.5, label="truth")
        if len(est):
            ax.plot(est[:, i], est[:, j], "r-", lw=1.0, label="estimate")
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xlabel("mm")
    axes[0].legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(path: str | Path, records) -> None:
    """Translation and rotation error over time, with the lost frames shaded."""
    plt = _plt()
    rows = [(r.stamp, r.pose.translation_error(r.truth) * 1e3, np.degrees(r.pose.rotation_error(r.truth)), r.state)
            for r in records if r.pose is not None and r.truth is not None]
    if not rows:
        return
    a = np.array(rows)
    t = a[:, 0] - a[0, 0]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    ax1.plot(t, a[:, 1], "r-")
    ax1.set_ylabel("translation error (mm)")
    ax2.plot(t, a[:, 2], "b-")
    ax2.set_ylabel("rotation error (deg)")
    ax2.set_xlabel("time (s)")
    lost = a[:, 3] != 1
    for ax in (ax1, ax2):
        ax.fill_between(t, 0, 1, where=lost, transform=ax.get_xaxis_transform(), color="orange", alpha=0.3,
                        label="not tracking")
        ax.grid(alpha=0.3)
    ax1.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay_strip(path: str | Path, renderer, records, n: int = 8) -> None:
    """A strip of frames with the airway rendered at the estimate (top) and at the truth (bottom)."""
    import cv2

    from .overlay import render_overlay

    recs = [r for r in records if r.rgb is not None and r.pose is not None]
    if not recs:
        return
    recs = [recs[i] for i in np.linspace(0, len(recs) - 1, min(n, len(recs))).astype(int)]
    tiles_e, tiles_t = [], []
    for r in recs:
        cam = r.camera
        tiles_e.append(render_overlay(r.rgb, renderer, cam, r.pose, state_text="estimate"))
        tiles_t.append(render_overlay(r.rgb, renderer, cam, r.truth, state_text="truth") if r.truth else r.rgb)
    img = np.vstack([np.hstack(tiles_e), np.hstack(tiles_t)])
    cv2.imwrite(str(path), img[..., ::-1])
