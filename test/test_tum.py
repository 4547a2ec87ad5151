"""TUM trajectory files: round trip, comments, exact integer-nanosecond stamps, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from bronchopt_ros.geometry import Pose
from bronchopt_ros.io.tum import TumFormatError, read_tum, stamps_to_ns, write_tum


def _poses(n: int, seed: int = 0) -> list[Pose]:
    rng = np.random.default_rng(seed)
    return [Pose.exp(np.concatenate([rng.normal(0, 0.05, 3), rng.normal(0, 1.0, 3)])) for _ in range(n)]


def test_round_trip(tmp_path):
    poses = _poses(25)
    stamps = 1.7e9 + np.arange(25) / 30.0
    path = write_tum(tmp_path / "a.tum", stamps, poses, header="made by a test\nsecond line")
    text = path.read_text().splitlines()
    assert text[0] == "# made by a test" and text[1] == "# second line"
    s2, p2 = read_tum(path)
    assert np.allclose(s2, stamps, atol=1e-6)
    for a, b in zip(poses, p2):
        assert a.translation_error(b) < 1e-8
        assert a.rotation_error(b) < 1e-7


def test_integer_nanosecond_stamps_are_exact(tmp_path):
    ns = 1_700_000_000_000_000_000 + np.round(np.arange(10) * 1e9 / 30).astype(np.int64)
    write_tum(tmp_path / "b.tum", ns, _poses(10))
    s, _ = read_tum(tmp_path / "b.tum")
    first = (tmp_path / "b.tum").read_text().split()[0]
    assert first == "1700000000.000000000"
    assert np.all(np.abs(stamps_to_ns(s) - ns) < 1000)  # float64 seconds keep < 1 us here


def test_comments_blank_lines_and_unnormalised_quaternion(tmp_path):
    p = tmp_path / "c.tum"
    p.write_text("# header\n\n1.0 0 0 0 0 0 0 2\n  \n2.0,1,2,3,0,0,1,1\n")
    s, poses = read_tum(p)
    assert s.tolist() == [1.0, 2.0]
    assert np.allclose(poses[0].R, np.eye(3))
    assert np.allclose(poses[1].t, [1, 2, 3])
    assert abs(poses[1].rotation_error(Pose.identity()) - np.pi / 2) < 1e-9


@pytest.mark.parametrize("line,msg", [("1 2 3", "expected 8"), ("1 0 0 0 0 0 0 x", "not a number"),
                                      ("1 0 0 0 0 0 0 0", "quaternion"), ("1 nan 0 0 0 0 0 1", "non-finite")])
def test_bad_lines_raise_with_location(tmp_path, line, msg):
    p = tmp_path / "bad.tum"
    p.write_text("0 0 0 0 0 0 0 1\n" + line + "\n")
    with pytest.raises(TumFormatError, match=msg) as exc:
        read_tum(p)
    assert ":2:" in str(exc.value)


def test_length_mismatch(tmp_path):
    with pytest.raises(ValueError):
        write_tum(tmp_path / "d.tum", [0.0, 1.0], _poses(3))
