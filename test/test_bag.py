"""Case bags: written with the contract's topics/types/frames/stamps, read back with rosbags and
with read_case_bag (mcap and sqlite3), and damaged bags yield what is good plus an error."""
from __future__ import annotations

import os

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from bronchopt_ros.geometry import Camera, Pose
from bronchopt_ros.io.bag import (CAMERA_FRAME, CT_FRAME, MSGTYPES, TOPIC_CAMERA_INFO, TOPIC_IMAGE,
                                  TOPIC_IMAGE_COMPRESSED, TOPIC_INITIALPOSE, TOPIC_POSE_GT, BagWriter,
                                  read_case_bag, typestore)

CAM = Camera(32, 24, 20.0, 21.0, 15.5, 11.5, np.array([0.01, -0.002, 0.0, 0.0, 0.0]))
T0 = 1_700_000_000_000_000_000
DT = 33_333_333


def _frames(n: int):
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(n)]
    poses = [Pose.exp(rng.normal(0, 0.05, 6)) for _ in range(n)]
    return imgs, poses


def _write(path, n=12, **kw):
    imgs, poses = _frames(n)
    with BagWriter(path, **kw) as w:
        w.write_initialpose(T0 - 10_000_000, poses[0])
        for i in range(n):
            w.write_frame(T0 + i * DT, imgs[i], CAM, poses[i])
    return imgs, poses


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_contract_topics_read_back_with_rosbags(tmp_path, storage):
    imgs, poses = _write(tmp_path / "bag", storage=storage)
    ts = typestore()
    with Reader(tmp_path / "bag") as r:
        types = {c.topic: c.msgtype for c in r.connections}
        assert types == {t: MSGTYPES[t] for t in (TOPIC_IMAGE, TOPIC_CAMERA_INFO, TOPIC_INITIALPOSE, TOPIC_POSE_GT)}
        msgs = [(c.topic, t, ts.deserialize_cdr(raw, c.msgtype)) for c, t, raw in r.messages()]
    stamp = lambda m: m.header.stamp.sec * 10**9 + m.header.stamp.nanosec  # noqa: E731
    first_image_log = min(t for topic, t, _ in msgs if topic == TOPIC_IMAGE)
    init = [(t, m) for topic, t, m in msgs if topic == TOPIC_INITIALPOSE]
    assert len(init) == 1 and init[0][0] < first_image_log and init[0][1].header.frame_id == CT_FRAME
    im = [m for topic, _, m in msgs if topic == TOPIC_IMAGE]
    ci = [m for topic, _, m in msgs if topic == TOPIC_CAMERA_INFO]
    gt = [m for topic, _, m in msgs if topic == TOPIC_POSE_GT]
    assert [stamp(m) for m in im] == [stamp(m) for m in ci] == [stamp(m) for m in gt] == [T0 + i * DT for i in range(12)]
    assert all(m.header.frame_id == CAMERA_FRAME and m.encoding == "rgb8" for m in im)
    assert all(m.header.frame_id == CAMERA_FRAME and m.distortion_model == "plumb_bob" for m in ci)
    assert all(m.header.frame_id == CT_FRAME for m in gt)
    assert np.allclose(ci[0].k, CAM.K.ravel()) and np.allclose(ci[0].d, CAM.dist)
    for topic, t, m in msgs:  # logged at the header stamp
        assert t == stamp(m)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_read_case_bag_events(tmp_path, storage):
    imgs, poses = _write(tmp_path / "bag", storage=storage, compressed_images="png")
    ev = list(read_case_bag(tmp_path / "bag"))
    assert not [e for e in ev if e.kind == "error"]
    assert ev[0].kind == "initialpose" and ev[0].data.translation_error(poses[0]) < 1e-12
    assert ev[0].covariance.shape == (6, 6)
    logs = [e.log_time_ns for e in ev]
    assert logs == sorted(logs)
    raw = [e for e in ev if e.kind == "image" and not e.compressed]
    comp = [e for e in ev if e.kind == "image" and e.compressed]
    assert len(raw) == len(comp) == 12
    for i, (a, b) in enumerate(zip(raw, comp)):
        assert np.array_equal(a.data, imgs[i]) and np.array_equal(b.data, imgs[i])  # png is lossless
    cams = [e.data for e in ev if e.kind == "camera_info"]
    assert cams[0].K.tolist() == CAM.K.tolist() and np.allclose(cams[0].dist, CAM.dist)
    gts = [e for e in ev if e.kind == "pose_gt"]
    assert all(g.data.translation_error(p) < 1e-12 and g.data.rotation_error(p) < 1e-7 for g, p in zip(gts, poses))
    assert [g.stamp_ns for g in gts] == [e.stamp_ns for e in raw]


def test_truncated_mcap_yields_good_messages_then_error(tmp_path):
    _write(tmp_path / "bag", n=40)
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    size = os.path.getsize(mcap)
    with open(mcap, "r+b") as fh:
        fh.truncate(int(size * 0.6))
    ev = list(read_case_bag(tmp_path / "bag"))
    assert ev[-1].kind == "error" and "damaged" in ev[-1].error
    good = [e for e in ev if e.kind == "image"]
    assert 0 < len(good) < 40
    assert all(e.data.shape == (24, 32, 3) for e in good)
    # a bare truncated .mcap file (no metadata.yaml) reads the same way
    ev2 = list(read_case_bag(mcap))
    assert len([e for e in ev2 if e.kind == "image"]) == len(good)


def test_corrupt_bytes_and_missing_bag(tmp_path):
    _write(tmp_path / "bag", n=40)
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = os.urandom(64)
    mcap.write_bytes(bytes(data))
    ev = list(read_case_bag(tmp_path / "bag"))  # must not raise
    assert any(e.kind == "error" for e in ev) or len([e for e in ev if e.kind == "image"]) == 40
    with pytest.raises(FileNotFoundError):
        list(read_case_bag(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    ev = list(read_case_bag(tmp_path / "empty"))
    assert len(ev) == 1 and ev[0].kind == "error"
