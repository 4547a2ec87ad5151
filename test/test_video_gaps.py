"""VideoGaps: the frames a video lost, found from the received images' stamps."""
import numpy as np

from bronchopt_ros.video_gaps import VideoGaps


def test_gaps_and_missing_frames_are_counted_from_the_stamps():
    rng = np.random.default_rng(0)
    stamps = np.arange(300) / 30.0 + rng.normal(0, 0.002, 300)  # (a 30 frames/s camera's jittery stamps)
    lost = {40: 1, 41: 0, 100: 3, 200: 4}  # index of the first lost frame: run length
    keep = np.ones(300, bool)
    for i, n in lost.items():
        keep[i:i + n] = False
    gaps = VideoGaps()
    found = {i: gaps.add(t) for i, t in enumerate(stamps) if keep[i]}
    assert {i: n for i, n in found.items() if n} == {41: 1, 103: 3, 204: 4}  # (at the frame after each run)
    assert gaps.gaps == 3 and gaps.missing == 8


def test_too_few_stamps_tell_nothing_and_a_loop_starts_again():
    gaps = VideoGaps(min_steps=5)
    assert [gaps.add(t) for t in (0.0, 0.033, 0.2)] == [0, 0, 0]  # (no period known yet)
    for t in np.arange(7, 20) / 30.0:
        gaps.add(t)
    assert gaps.add(20 / 30.0 + 0.1) == 3 and gaps.gaps == 1
    assert gaps.add(0.0) == 0 and gaps.add(0.0) == 0  # (backwards: a new recording; a repeated stamp)
    assert gaps.add(0.5) == 0  # (the period is unknown again)
    assert gaps.gaps == 1 and gaps.missing == 3
