"""The SO(3)/SE(3) maps every solver calls: the closed forms against scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bronchopt_ros.geometry import Pose, so3_exp, so3_log


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-5, 0.01, 0.5, 2.0, np.pi - 1e-2, np.pi - 1e-4, np.pi])
def test_so3_exp_and_log_match_scipy(angle):
    rng = np.random.default_rng(int(angle * 1e4))
    for _ in range(20):
        axis = rng.normal(size=3)
        w = angle * axis / np.linalg.norm(axis)
        R = so3_exp(w)
        np.testing.assert_allclose(R, Rotation.from_rotvec(w).as_matrix(), atol=1e-12)
        w2 = so3_log(R)
        # Same rotation (at a half turn w and -w are the same rotation).
        np.testing.assert_allclose(so3_exp(w2), R, atol=1e-9)
        if angle < np.pi - 1e-3:
            np.testing.assert_allclose(w2, w, atol=1e-9)


def test_pose_log_inverts_exp_and_retract_composes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        xi = np.concatenate([rng.normal(0, 0.01, 3), rng.normal(0, 0.5, 3)])
        np.testing.assert_allclose(Pose.exp(xi).log(), xi, atol=1e-10)
        a = Pose.exp(rng.normal(0, 0.3, 6))
        np.testing.assert_allclose((a.inv() @ a.retract(xi)).log(), xi, atol=1e-9)
