"""Image messages <-> numpy with cv_bridge semantics, on rosbags and rclpy messages alike."""
from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest

from bronchopt_ros.io.image import (ENCODINGS, ImageConversionError, compressed_to_numpy, convert_encoding,
                                    image_to_numpy, msg_to_rgb8, numpy_to_compressed, numpy_to_image)


def _img(enc: str, h: int = 7, w: int = 5, seed: int = 0) -> np.ndarray:
    c, dt, _ = ENCODINGS[enc]
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, np.iinfo(dt).max, shape, endpoint=True).astype(dt)


@pytest.mark.parametrize("enc", list(ENCODINGS))
def test_round_trip_rosbags(enc):
    a = _img(enc)
    msg = numpy_to_image(a, enc)
    assert msg.encoding == enc and msg.height == 7 and msg.width == 5
    assert msg.step == 5 * a.dtype.itemsize * (1 if a.ndim == 2 else a.shape[2])
    b = image_to_numpy(msg)
    assert b.dtype == a.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("enc", ["rgb8", "mono16", "bgra8"])
def test_round_trip_rclpy(enc):
    Image = pytest.importorskip("sensor_msgs.msg").Image
    a = _img(enc)
    msg = numpy_to_image(a, enc, msg_type=Image)
    assert isinstance(msg, Image) and isinstance(msg.data, array.array)
    assert np.array_equal(image_to_numpy(msg), a)


def test_colour_conversions_follow_cv_bridge():
    rgb = _img("rgb8")
    bgr = image_to_numpy(numpy_to_image(rgb, "rgb8"), "bgr8")
    assert np.array_equal(bgr, rgb[..., ::-1])
    rgba = convert_encoding(rgb, "rgb8", "rgba8")
    assert rgba.shape[-1] == 4 and np.all(rgba[..., 3] == 255) and np.array_equal(rgba[..., :3], rgb)
    m16 = np.array([[0, 257, 65535]], np.uint16)
    assert convert_encoding(m16, "mono16", "mono8").tolist() == [[0, 1, 255]]
    assert convert_encoding(np.array([[1]], np.uint8), "mono8", "mono16").tolist() == [[257]]
    assert msg_to_rgb8(numpy_to_image(m16, "mono16")).shape == (1, 3, 3)


def test_padded_rows_and_big_endian():
    a = _img("mono16", 4, 3)
    be = a.astype(">u2").tobytes()
    step = 3 * 2 + 4  # 4 padding bytes per row
    data = b"".join(be[r * 6:(r + 1) * 6] + b"\xee" * 4 for r in range(4))
    msg = SimpleNamespace(height=4, width=3, encoding="mono16", is_bigendian=1, step=step, data=data)
    assert np.array_equal(image_to_numpy(msg), a)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed(fmt):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[8:24, 8:40, 1] = 120
    msg = numpy_to_compressed(rgb, "rgb8", fmt)
    assert fmt in msg.format
    back = compressed_to_numpy(msg, "rgb8")
    err = np.abs(back.astype(int) - rgb)
    assert back.shape == rgb.shape
    if fmt == "png":
        assert err.max() == 0
    else:  # lossy, chroma subsampled at the sharp edges
        assert err.mean() < 4
    assert np.array_equal(compressed_to_numpy(msg)[..., ::-1], back)  # passthrough is bgr8
    assert msg_to_rgb8(msg).shape == rgb.shape


def _msg(**kw):
    base = dict(height=2, width=2, encoding="rgb8", is_bigendian=0, step=6, data=bytes(12))
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("kw,msg", [
    (dict(encoding="yuv422"), "unsupported"),
    (dict(height=0, data=b""), "zero"),
    (dict(width=0, step=0, data=b""), "zero"),
    (dict(step=5), "shorter than a row"),
    (dict(data=bytes(11)), "expected step"),
    (dict(data=bytes(13)), "expected step"),
    (dict(height=2.0), "integer"),
    (dict(data=None), "not a byte buffer"),
    (dict(is_bigendian=3), "is_bigendian"),
])
def test_clear_errors(kw, msg):
    with pytest.raises(ImageConversionError, match=msg):
        image_to_numpy(_msg(**kw))


def test_wrong_array_for_encoding():
    with pytest.raises(ImageConversionError):
        numpy_to_image(np.zeros((4, 4, 3), np.uint16), "rgb8")
    with pytest.raises(ImageConversionError):
        numpy_to_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError):
        numpy_to_image(np.zeros((0, 4, 3), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError):
        compressed_to_numpy(SimpleNamespace(format="jpeg", data=b"not a jpeg"))
    with pytest.raises(ImageConversionError):
        image_to_numpy(_msg(), "hsv8")


def test_fuzz_never_raises_anything_else():
    rng = np.random.default_rng(1234)
    encs = list(ENCODINGS) + ["", "RGB8", "bayer_rggb8", None, 7, b"rgb8"]
    values = [0, 1, 2, 3, 7, 64, -1, -(2**31), 2**40, None, 2.5, "3", True]
    for _ in range(600):
        h, w, step = (values[rng.integers(len(values))] if rng.random() < 0.3 else int(rng.integers(0, 9))
                      for _ in range(3))
        n = int(rng.integers(0, 300))
        kinds = [bytes(rng.integers(0, 256, n, dtype=np.uint8)), list(rng.integers(-5, 300, n)),
                 rng.integers(0, 256, n).astype(np.uint8), rng.random(n), None, "text",
                 array.array("B", bytes(n)), array.array("i", [1, 2])]
        m = SimpleNamespace(height=h, width=w, step=step, encoding=encs[rng.integers(len(encs))],
                            is_bigendian=int(rng.integers(0, 3)), data=kinds[rng.integers(len(kinds))])
        if rng.random() < 0.05:
            del m.step
        for fn in (lambda: image_to_numpy(m), lambda: image_to_numpy(m, "rgb8"), lambda: msg_to_rgb8(m)):
            try:
                fn()
            except ImageConversionError:
                pass
        c = SimpleNamespace(format=["jpeg", "png", "", None][rng.integers(4)], data=m.data)
        try:
            compressed_to_numpy(c, "rgb8")
        except ImageConversionError:
            pass
