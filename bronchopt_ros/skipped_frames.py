"""The frames a busy tracker skipped, kept for the odometry's catch-up.

When the tracker cannot keep up (or stalls: a slow first frame, a (re)initialisation, the machine
busy elsewhere), the node keeps only the newest frame for the tracker and drops the others. The
odometry can still follow its corners through some of the dropped frames before the next processed
one, so that no single step is too long for it (:meth:`Tracker.select_skipped` picks which).

A plain "last N frames" buffer covers only the end of a long stall: after a 1.7 s stall at 30
frames/s the last 8 of 51 dropped frames say nothing about the first 1.4 s, and the odometry's first
step would be 1.4 s long (it fails; the tracker then registers from the stale pose). So this buffer
thins instead of forgetting: it keeps every frame until full, then every second one, then every
fourth, ..., always with the newest - a bounded number spread evenly over the whole gap, with steps
between kept frames at most about twice as long as an even spread would give.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SkippedFrames"]


class SkippedFrames:
    """Items (messages or frames) with their stamps, thinned to at most ``capacity``.

    ``append(item, stamp)`` in arrival order; ``take()`` returns them oldest first and empties the
    buffer. ``capacity`` >= 2 (one slot always holds the newest)."""

    def __init__(self, capacity: int = 64):
        if capacity < 2:
            raise ValueError(f"SkippedFrames needs a capacity of at least 2, got {capacity}")
        self.capacity = int(capacity)
        self.clear()

    def clear(self) -> None:
        self._kept: list[tuple[float, Any]] = []  # thinned, oldest first
        self._newest: tuple[float, Any] | None = None
        self._spacing = 0.0  # the least time between kept frames (grows as the buffer thins)

    def append(self, item: Any, stamp: float) -> None:
        if self._newest is not None:
            t = self._newest[0]
            if not self._kept or t - self._kept[-1][0] >= self._spacing:
                self._kept.append(self._newest)
                if len(self._kept) >= self.capacity:
                    self._thin()
        self._newest = (float(stamp), item)

    def _thin(self) -> None:
        """Drop every second kept frame (the oldest stays: it is the closest to the last processed one)."""
        kept = self._kept[::2]
        if len(kept) >= 2:
            # (a tenth below the even spacing: stamps of a 30 Hz camera are not exactly periodic)
            self._spacing = 0.9 * (kept[-1][0] - kept[0][0]) / (len(kept) - 1)
        self._kept = kept

    def take(self) -> list[Any]:
        items = [item for _, item in self._kept]
        if self._newest is not None:
            items.append(self._newest[1])
        self.clear()
        return items

    def stamps(self) -> list[float]:
        return [t for t, _ in self._kept] + ([self._newest[0]] if self._newest is not None else [])

    def __len__(self) -> int:
        return len(self._kept) + (self._newest is not None)
