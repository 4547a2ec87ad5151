"""The endoscope image's black surround (bronchopt_ros.image_mask) and the tracker with it: found
on real frames of a simulated procedure, filled, and kept out of the evidence."""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from bronchopt_ros.image_mask import BorderMask, fill_surround, surround_of


def _circle(h: int, w: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) <= r


def _octagon(h: int, w: int, cut: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + yy >= cut) & ((w - 1 - xx) + yy >= cut) & (xx + (h - 1 - yy) >= cut) & ((w - 1 - xx) + (h - 1 - yy) >= cut)


def _frames(n: int, h: int = 96, w: int = 120, seed: int = 0):
    """Textured frames with a dark (not black) lumen in the middle that moves between them."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        img = rng.integers(40, 220, (h, w, 3)).astype(np.uint8)
        img = cv2.GaussianBlur(img, (0, 0), 1.5)
        cv2.circle(img, (w // 2 + 3 * k, h // 2), 12, (6, 5, 7), -1)  # the lumen: dark, not black
        yield img


@pytest.mark.parametrize("shape", ["circle", "octagon"])
def test_the_surround_is_found_and_the_lumen_is_not(shape):
    h, w = 96, 120
    pic = _circle(h, w, 50.0) if shape == "circle" else _octagon(h, w, 30)
    bm = BorderMask(frames=5)
    for img in _frames(6, h, w):
        img[~pic] = 0
        mask = bm(img)
    assert bm.fixed and mask is not None
    np.testing.assert_array_equal(mask, pic)  # (the dark lumen in the middle is not surround)
    filled = bm.fill(img, mask)
    np.testing.assert_array_equal(filled[pic], img[pic])
    assert filled[~pic].max(axis=-1).mean() > 30  # (reflected picture, not black)


def test_frames_without_a_surround_get_none_and_a_new_size_starts_again():
    bm = BorderMask(frames=3)
    for img in _frames(4):
        assert bm(img) is None
    assert bm.fixed
    small = np.zeros((40, 50, 3), np.uint8) + 100
    small[~_circle(40, 50, 20.0)] = 0
    assert bm(small, learn=False) is None  # (another size: not this video's mask)
    assert bm(small) is not None and not bm.fixed  # (learnt anew)


def test_a_black_patch_seen_once_is_not_surround():
    """Only pixels black in every one of the first frames count (a dark corner of one frame does not)."""
    imgs = list(_frames(5))
    imgs[0][:20, :20] = 0
    bm = BorderMask(frames=5)
    for img in imgs:
        mask = bm(img)
    assert mask is None and surround_of(imgs[0])[:20, :20].all()


def test_black_frames_do_not_count():
    """Frames mostly black (the lens covered, the light off, before insertion) tell nothing: they
    are left out of the estimate, which the later frames make."""
    h, w = 96, 120
    pic = _circle(h, w, 50.0)
    bm = BorderMask(frames=5)
    for _ in range(4):
        assert bm(np.zeros((h, w, 3), np.uint8)) is None
    assert not bm.fixed
    for img in _frames(5, h, w):
        img[~pic] = 0
        mask = bm(img)
    assert bm.fixed
    np.testing.assert_array_equal(mask, pic)


def test_fill_reflects_the_picture_across_its_edge():
    h, w = 64, 64
    pic = _circle(h, w, 28.0)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.tile(np.arange(w, dtype=np.uint8) * 3, (h, 1))  # a horizontal ramp
    img[~pic] = 0
    out = fill_surround(img, pic)
    # On the row through the centre, just outside the circle's right edge, the ramp is mirrored.
    y, x_edge = 32, int(np.flatnonzero(pic[32]).max())
    assert abs(int(out[y, x_edge + 2, 0]) - int(img[y, x_edge - 2, 0])) <= 6


def test_tracking_through_a_circular_field(tmp_path):
    """A simulated procedure whose frames are blacked out beyond the inscribed circle: with the
    surround found, filled and left out, it tracks as the full frames do; without (border_mask
    off) the estimate is lost at once (validation procedure 2500, 300 frames: 123 mm, 1.7 %
    without; 1.35 mm, 100 % with)."""
    from bronchopt_ros.evaluation import load_case_airway, pose_at_stamp, truth_by_stamp
    from bronchopt_ros.io.bag import read_case_bag
    from bronchopt_ros.pipeline import PipelineConfig, build_tracker, load_default_encoder, prepare_frame
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy
    from bronchopt_ros.sim.case import CaseParams, write_case
    from bronchopt_ros.sim.trajectory import TrajectoryParams

    case = tmp_path / "case"
    write_case(case, 2506, CaseParams(n_frames=40, size=128, starts=False, trajectory=TrajectoryParams(max_speed=8e-3)),
               anatomy=generate_anatomy(2506, AnatomyParams(generations=3)))
    events = list(read_case_bag(case / "procedure"))
    cam = next(e.data for e in events if e.kind == "camera_info")
    init = next(e for e in events if e.kind == "initialpose")
    images = [e for e in events if e.kind == "image"]
    truth = truth_by_stamp(case)
    pic = _circle(cam.height, cam.width, cam.width / 2)
    encoder = load_default_encoder(PipelineConfig())
    errs = {}
    for name, masked, on in (("full", False, True), ("circle", True, True), ("circle_off", True, False)):
        cfg = PipelineConfig(relocalisation=False)
        cfg = replace(cfg, tracker=replace(cfg.tracker, border_mask=on, registration_wait_s=float("inf")))
        tracker = build_tracker(load_case_airway(case), cfg, encoder=encoder)
        tracker.initialise(init.data, init.covariance)
        e = []
        for ev in images:
            rgb = ev.data.copy()
            if masked:
                rgb[~pic] = 0
            res = tracker.process(prepare_frame(rgb, cam, ev.stamp_s))
            e.append(res.pose.translation_error(pose_at_stamp(truth, ev.stamp_s)) * 1e3)
        tracker.close()
        errs[name] = float(np.mean(e))
    assert errs["circle"] < max(1.5 * errs["full"], errs["full"] + 0.5), errs
    assert errs["circle"] < 0.5 * errs["circle_off"], errs
