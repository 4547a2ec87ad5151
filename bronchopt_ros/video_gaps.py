"""Frames missing from the video: gaps between the received images' stamps.

A camera or its transport may lose frames (a capture card under load, a best-effort ROS topic over
a busy network). Nothing gets them back, but the user should know: the tracker's step over such a
gap is longer (the odometry zooms for it, ``odometry.gap_step_s``), and a run of them is worth
fixing at the source. A step between consecutive stamps longer than ``factor`` times the camera's
frame period (the median of the recent steps: stamps jitter) counts as one gap of round(step / period) - 1
missing frames. Stamps going backwards (a bag looping) start the estimate again.
"""
from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["VideoGaps"]


class VideoGaps:
    """Counts the gaps in a stream of image stamps (seconds), fed in arrival order with :meth:`add`."""

    def __init__(self, factor: float = 1.5, history: int = 30, min_steps: int = 5):
        self.factor, self.min_steps = float(factor), int(min_steps)
        self._steps: deque = deque(maxlen=int(history))  # the recent steps between stamps (s)
        self._last: float | None = None
        self.gaps = 0  # gaps found
        self.missing = 0  # frames missing in them

    def add(self, stamp: float) -> int:
        """The frames missing just before ``stamp`` (0: none, or too few stamps yet to tell)."""
        last, self._last = self._last, float(stamp)
        if last is None or stamp <= last:
            if last is not None and stamp < last:
                self._steps.clear()  # (time went backwards: a new recording)
            return 0
        step = stamp - last
        period = float(np.median(self._steps)) if len(self._steps) >= self.min_steps else None
        self._steps.append(step)
        if period is None or step <= self.factor * period:
            return 0
        n = max(1, round(step / period) - 1)
        self.gaps += 1
        self.missing += n
        return n
