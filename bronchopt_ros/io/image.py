"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` <-> numpy, with cv_bridge semantics.

Works on rclpy messages and on rosbags messages alike: reading only uses attribute access
(``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, ``data`` / ``format``,
``data``), writing builds whichever message class it is given (rosbags' by default).

Supported encodings: ``rgb8``, ``bgr8``, ``mono8``, ``rgba8``, ``bgra8``, ``mono16``.
:func:`image_to_numpy` returns the pixels in the message's encoding (``passthrough``, as
cv_bridge's ``imgmsg_to_cv2``) or converted to ``desired_encoding``: (H, W) for mono, (H, W, C)
otherwise, uint8 or uint16 (native byte order). Anything wrong with a message (unknown
encoding, zero size, a ``step`` shorter than a row, a data length other than
``step * height``, undecodable compressed data) raises :class:`ImageConversionError` and
nothing else.
"""
from __future__ import annotations

import array
import sys
from typing import Any

import numpy as np

__all__ = ["ImageConversionError", "ENCODINGS", "image_to_numpy", "numpy_to_image",
           "compressed_to_numpy", "numpy_to_compressed", "msg_to_rgb8", "convert_encoding"]


class ImageConversionError(ValueError):
    """An image message that cannot be converted (the message says why)."""


# encoding -> (channels, numpy dtype, colour order)
ENCODINGS: dict[str, tuple[int, type, str]] = {
    "rgb8": (3, np.uint8, "rgb"),
    "bgr8": (3, np.uint8, "bgr"),
    "rgba8": (4, np.uint8, "rgba"),
    "bgra8": (4, np.uint8, "bgra"),
    "mono8": (1, np.uint8, "mono"),
    "mono16": (1, np.uint16, "mono"),
}

_MAX_PIXELS = 1 << 28  # refuse absurd headers before allocating


# --------------------------------------------------------------------------- helpers
def _int_field(msg: Any, name: str) -> int:
    try:
        v = getattr(msg, name)
    except Exception as exc:  # any attribute failure is a bad message
        raise ImageConversionError(f"image message has no '{name}' field") from exc
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ImageConversionError(f"image field '{name}' must be an integer, got {type(v).__name__}")
    return int(v)


def _str_field(msg: Any, name: str) -> str:
    try:
        v = getattr(msg, name)
    except Exception as exc:
        raise ImageConversionError(f"image message has no '{name}' field") from exc
    if isinstance(v, bytes):
        try:
            v = v.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ImageConversionError(f"image field '{name}' is not text") from exc
    if not isinstance(v, str):
        raise ImageConversionError(f"image field '{name}' must be a string, got {type(v).__name__}")
    return v


def _data_bytes(msg: Any) -> np.ndarray:
    """The ``data`` field as a flat uint8 array (no copy where possible)."""
    try:
        data = getattr(msg, "data")
    except Exception as exc:
        raise ImageConversionError("image message has no 'data' field") from exc
    try:
        if isinstance(data, np.ndarray):
            if data.dtype not in (np.uint8, np.int8):
                raise ImageConversionError(f"image data must be uint8, got {data.dtype}")
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return np.frombuffer(data, dtype=np.uint8)
        if isinstance(data, array.array):
            if data.typecode not in ("B", "b"):
                raise ImageConversionError(f"image data must be bytes, got array('{data.typecode}')")
            return np.frombuffer(data, dtype=np.uint8)
        if isinstance(data, (list, tuple)):
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < 256 for v in data):
                raise ImageConversionError("image data list must hold integers 0-255")
            return np.asarray(data, dtype=np.uint8).reshape(-1)
    except ImageConversionError:
        raise
    except Exception as exc:
        raise ImageConversionError(f"unreadable image data: {exc}") from exc
    raise ImageConversionError(f"image data of type {type(data).__name__} is not a byte buffer")


def _check_encoding(encoding: str, what: str = "encoding") -> tuple[int, type, str]:
    enc = encoding.strip().lower() if isinstance(encoding, str) else encoding
    if enc not in ENCODINGS:
        raise ImageConversionError(f"unsupported {what} '{encoding}' (supported: {', '.join(ENCODINGS)})")
    return ENCODINGS[enc]


def convert_encoding(img: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert pixels between two supported encodings (colour order, alpha, bit depth).

    Bit depth follows cv_bridge: 16 -> 8 bit scales by 255/65535, 8 -> 16 by 65535/255.
    """
    import cv2

    sc, sd, so = _check_encoding(src)
    dc, dd, do = _check_encoding(dst, "desired encoding")
    src, dst = src.strip().lower(), dst.strip().lower()
    if src == dst:
        return img
    out = img
    if sd != dd:
        scale = 255.0 / 65535.0 if sd == np.uint16 else 65535.0 / 255.0
        out = np.clip(np.rint(out.astype(np.float64) * scale), 0, np.iinfo(dd).max).astype(dd)
    if so != do:
        codes = {
            ("rgb", "bgr"): cv2.COLOR_RGB2BGR, ("bgr", "rgb"): cv2.COLOR_BGR2RGB,
            ("rgb", "rgba"): cv2.COLOR_RGB2RGBA, ("rgb", "bgra"): cv2.COLOR_RGB2BGRA,
            ("bgr", "rgba"): cv2.COLOR_BGR2RGBA, ("bgr", "bgra"): cv2.COLOR_BGR2BGRA,
            ("rgba", "rgb"): cv2.COLOR_RGBA2RGB, ("rgba", "bgr"): cv2.COLOR_RGBA2BGR,
            ("bgra", "rgb"): cv2.COLOR_BGRA2RGB, ("bgra", "bgr"): cv2.COLOR_BGRA2BGR,
            ("rgba", "bgra"): cv2.COLOR_RGBA2BGRA, ("bgra", "rgba"): cv2.COLOR_BGRA2RGBA,
            ("rgb", "mono"): cv2.COLOR_RGB2GRAY, ("bgr", "mono"): cv2.COLOR_BGR2GRAY,
            ("rgba", "mono"): cv2.COLOR_RGBA2GRAY, ("bgra", "mono"): cv2.COLOR_BGRA2GRAY,
            ("mono", "rgb"): cv2.COLOR_GRAY2RGB, ("mono", "bgr"): cv2.COLOR_GRAY2BGR,
            ("mono", "rgba"): cv2.COLOR_GRAY2RGBA, ("mono", "bgra"): cv2.COLOR_GRAY2BGRA,
        }
        out = cv2.cvtColor(np.ascontiguousarray(out), codes[(so, do)])
    return out


# --------------------------------------------------------------------------- raw images
def image_to_numpy(msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
    """``sensor_msgs/Image`` -> numpy (a copy), like cv_bridge's ``imgmsg_to_cv2``.

    Rows padded beyond ``width * pixel size`` (``step`` larger than a row) are cropped; a
    big-endian ``mono16`` is byte-swapped to native order.
    """
    height, width = _int_field(msg, "height"), _int_field(msg, "width")
    step, bigendian = _int_field(msg, "step"), _int_field(msg, "is_bigendian")
    encoding = _str_field(msg, "encoding")
    channels, dtype, _ = _check_encoding(encoding)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero or negative size {width}x{height}")
    if height * width > _MAX_PIXELS:
        raise ImageConversionError(f"image size {width}x{height} is implausibly large")
    itemsize = np.dtype(dtype).itemsize
    row = width * channels * itemsize
    if step < row:
        raise ImageConversionError(f"image step {step} is shorter than a row of {width} {encoding} pixels ({row} bytes)")
    if bigendian not in (0, 1):
        raise ImageConversionError(f"image is_bigendian must be 0 or 1, got {bigendian}")
    buf = _data_bytes(msg)
    if buf.size != step * height:
        raise ImageConversionError(f"image data holds {buf.size} bytes, expected step*height = {step}*{height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row]
    img = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if bigendian else "<"))
    img = img.astype(dtype, copy=True)  # native byte order, owned copy
    img = img.reshape(height, width) if channels == 1 else img.reshape(height, width, channels)
    if desired_encoding != "passthrough":
        img = convert_encoding(img, encoding, desired_encoding)
    return img


def _is_dataclass_msg(msg_type: Any) -> bool:
    return hasattr(msg_type, "__dataclass_fields__")


def _make_msg(msg_type: Any, fields: dict, header: Any) -> Any:
    """Build a message of ``msg_type`` (rosbags dataclass or rclpy class) from ``fields``."""
    data = fields["data"]
    if _is_dataclass_msg(msg_type):
        if header is None:
            from .bag import make_header

            header = make_header(0, "")
        return msg_type(header=header, **fields)
    fields = dict(fields, data=array.array("B", data.tobytes()))
    msg = msg_type(**fields) if header is None else msg_type(header=header, **fields)
    return msg


def _default_type(name: str) -> Any:
    from .bag import typestore

    return typestore().types[name]


def numpy_to_image(img: np.ndarray, encoding: str, header: Any = None, msg_type: Any = None) -> Any:
    """numpy -> ``sensor_msgs/Image`` in ``encoding`` (like cv_bridge's ``cv2_to_imgmsg``).

    ``img`` must already be in ``encoding``'s layout and dtype: (H, W) or (H, W, 1) for mono,
    (H, W, 3|4) for colour. ``msg_type`` is the message class to build (rclpy's
    ``sensor_msgs.msg.Image`` or a rosbags class; rosbags' by default) and ``header`` its header
    (an empty one by default).
    """
    channels, dtype, _ = _check_encoding(encoding)
    img = np.asarray(img)
    if img.ndim == 3 and channels == 1 and img.shape[2] == 1:
        img = img[..., 0]
    want_ndim = 2 if channels == 1 else 3
    if img.ndim != want_ndim or (channels > 1 and img.shape[2] != channels):
        raise ImageConversionError(f"array of shape {img.shape} does not fit encoding '{encoding}'")
    if img.dtype != dtype:
        raise ImageConversionError(f"array dtype {img.dtype} does not fit encoding '{encoding}' ({np.dtype(dtype).name})")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageConversionError("cannot convert an empty image")
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    fields = dict(height=int(h), width=int(w), encoding=encoding.strip().lower(),
                  is_bigendian=int(sys.byteorder == "big" and img.dtype.itemsize > 1),
                  step=int(w * channels * img.dtype.itemsize),
                  data=img.reshape(-1).view(np.uint8))
    return _make_msg(msg_type or _default_type("sensor_msgs/msg/Image"), fields, header)


# --------------------------------------------------------------------------- compressed
def compressed_to_numpy(msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg or png) -> numpy.

    ``passthrough`` returns what the codec decodes (cv_bridge semantics): ``bgr8`` for colour,
    ``bgra8`` with alpha, ``mono8`` / ``mono16`` for grey.
    """
    import cv2

    fmt = _str_field(msg, "format")
    buf = _data_bytes(msg)
    if buf.size == 0:
        raise ImageConversionError(f"compressed image ('{fmt}') has no data")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # cv2.error on some corrupt streams
        raise ImageConversionError(f"cannot decode compressed image ('{fmt}'): {exc}") from exc
    if img is None or img.size == 0:
        raise ImageConversionError(f"cannot decode compressed image ('{fmt}', {buf.size} bytes)")
    if img.ndim == 2:
        enc = "mono16" if img.dtype == np.uint16 else "mono8"
    elif img.shape[2] == 3:
        enc = "bgr8"
    elif img.shape[2] == 4:
        enc = "bgra8"
    else:
        raise ImageConversionError(f"compressed image decodes to {img.shape[2]} channels")
    if img.dtype == np.uint16 and enc != "mono16":
        img = (img // 257).astype(np.uint8)
    if desired_encoding != "passthrough":
        img = convert_encoding(img, enc, desired_encoding)
    return img


def numpy_to_compressed(img: np.ndarray, encoding: str = "rgb8", fmt: str = "jpeg", quality: int = 90,
                        header: Any = None, msg_type: Any = None) -> Any:
    """numpy (in ``encoding``) -> ``sensor_msgs/CompressedImage`` as ``jpeg`` or ``png``.

    The ``format`` field follows image_transport's compressed plugin, e.g.
    ``"rgb8; jpeg compressed bgr8"``.
    """
    import cv2

    fmt = fmt.lower()
    if fmt not in ("jpeg", "jpg", "png"):
        raise ImageConversionError(f"unsupported compressed format '{fmt}' (jpeg or png)")
    channels, dtype, _ = _check_encoding(encoding)
    img = np.asarray(img)
    if img.dtype != dtype:
        raise ImageConversionError(f"array dtype {img.dtype} does not fit encoding '{encoding}'")
    if channels == 1:
        bgr, coded = (img[..., 0] if img.ndim == 3 else img), encoding
    else:
        bgr = convert_encoding(img, encoding, "bgr8")
        coded = "bgr8"
    if fmt in ("jpeg", "jpg") and bgr.dtype != np.uint8:
        raise ImageConversionError("jpeg needs 8-bit pixels")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt != "png" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, enc = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(bgr), params)
    if not ok:
        raise ImageConversionError(f"cannot encode image as {fmt}")
    name = "png" if fmt == "png" else "jpeg"
    fields = dict(format=f"{encoding}; {name} compressed {coded}", data=enc.reshape(-1).view(np.uint8))
    return _make_msg(msg_type or _default_type("sensor_msgs/msg/CompressedImage"), fields, header)


def msg_to_rgb8(msg: Any) -> np.ndarray:
    """Any supported ``Image`` or ``CompressedImage`` -> (H, W, 3) uint8 RGB."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_numpy(msg, "rgb8")
    return image_to_numpy(msg, "rgb8")
