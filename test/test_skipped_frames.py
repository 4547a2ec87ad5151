"""The node's buffer of dropped frames (bronchopt_ros.skipped_frames): bounded, spread evenly over
the whole gap, the oldest and the newest kept."""
from __future__ import annotations

import numpy as np
import pytest

from bronchopt_ros.skipped_frames import SkippedFrames


def test_keeps_every_frame_until_full_then_thins_evenly_over_the_gap():
    buf = SkippedFrames(8)
    for k in range(5):
        buf.append(f"frame {k}", k / 30.0)
    assert len(buf) == 5
    assert buf.take() == [f"frame {k}" for k in range(5)]  # all of them, oldest first
    assert len(buf) == 0 and buf.take() == []
    for n in (9, 30, 61, 200):
        for k in range(n):
            buf.append(k, k / 30.0)
        stamps = np.array(buf.stamps())
        kept = buf.take()
        assert len(kept) <= 8
        assert kept[0] == 0 and kept[-1] == n - 1  # the oldest and the newest
        assert kept == sorted(kept)
        steps = np.diff(stamps)
        even = (stamps[-1] - stamps[0]) / 7  # the step of an even spread over 8
        assert steps.max() <= 2 * even + 1 / 30.0, (n, kept)


def test_needs_room_for_the_newest_and_one_more():
    with pytest.raises(ValueError, match="at least 2"):
        SkippedFrames(1)
