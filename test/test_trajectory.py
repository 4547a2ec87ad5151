"""Procedures and random lumen poses: every camera centre strictly inside the lumen, smooth
motion with pauses / retractions / roll, reproducible."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures_sim import small_airway, small_centerline

from bronchopt_ros.render.raycast import Raycaster
from bronchopt_ros.sim.trajectory import (CenterlineIndex, LumenPoseParams, TrajectoryParams, inside_lumen,
                                          lumen_margin, plan_procedure, sample_lumen_poses, wall_distance)


@pytest.fixture(scope="module")
def airway():
    return small_airway()


@pytest.fixture(scope="module")
def rc(airway):
    return Raycaster(airway.vertices, airway.faces)


def _check_inside(airway, rc, centres, margin=1e-3, frac=0.4):
    index = CenterlineIndex(airway.centerline)
    assert rc.contains(centres).all()
    m = lumen_margin(index.local_radius(centres), margin, frac)
    assert np.all(index.clearance(centres) > m)  # distance to the centerline < radius - margin
    assert np.all(wall_distance(rc, centres) > 0.5 * m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_procedure_inside_and_smooth(airway, rc, seed):
    tr = plan_procedure(airway, np.random.default_rng(seed), n_frames=240, raycaster=rc)
    assert len(tr) == 240 and np.allclose(np.diff(tr.stamps_s), 1 / 30)
    c = tr.centres
    _check_inside(airway, rc, c)
    step = np.linalg.norm(np.diff(c, axis=0), axis=1)
    assert step.max() < 1.5e-3  # < 45 mm/s at 30 fps
    rot = [a.rotation_error(b) for a, b in zip(tr.poses[:-1], tr.poses[1:])]
    assert max(rot) < 0.1
    # the camera looks along the path: its optical axis within 60 deg of the motion direction
    # wherever it advances
    z = np.array([p.R[:, 2] for p in tr.poses])
    d = np.diff(c, axis=0)
    fwd = np.diff(tr.progress) > 2e-4
    cosang = np.einsum("ij,ij->i", z[1:][fwd], d[fwd]) / np.linalg.norm(d[fwd], axis=1)
    assert np.median(cosang) > np.cos(np.radians(35)) and cosang.min() > np.cos(np.radians(75))
    assert tr.path_branches[0] == airway.centerline.root.id and tr.path_branches[-1] == tr.target_leaf
    assert tr.branch[-1] in tr.path_branches


def test_pauses_retractions_roll(airway, rc):
    p = TrajectoryParams(p_pause=0.9, p_retract=0.9)
    tr = plan_procedure(airway, np.random.default_rng(5), params=p, raycaster=rc)
    ds = np.diff(tr.progress)
    assert (np.abs(ds) < 1e-6).sum() > 10  # pauses
    assert (ds < -1e-5).sum() > 5  # retractions
    assert tr.reached_target
    assert tr.progress.max() > 0.04
    # roll about the optical axis varies over the procedure
    x = np.array([q.R[:, 0] for q in tr.poses])
    assert np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", x[:1], x).min(), -1, 1))) > 10


def test_reproducible_and_target(airway, rc):
    a = plan_procedure(airway, np.random.default_rng(7), target_leaf=2, n_frames=60, raycaster=rc)
    b = plan_procedure(airway, np.random.default_rng(7), target_leaf=2, n_frames=60, raycaster=rc)
    assert all(np.array_equal(x.matrix, y.matrix) for x, y in zip(a.poses, b.poses))
    assert a.target_leaf == 2 and a.path_branches == [0, 2]
    c = plan_procedure(airway.centerline, np.random.default_rng(7), duration_s=2.0)  # centerline only
    assert len(c) == 61


def test_spread_targets_visit_each_lobe():
    """Targets for a bench over a given tree: one per generation-2 branch (a shallower leaf is its
    own group) in turn, each the deepest there within reach, then again."""
    from bronchopt_ros.sim.trajectory import TrajectoryError, spread_targets

    cl = small_centerline()  # 0 trachea; 1 right main -> 3, 4; 2 left main (a leaf)
    assert spread_targets(cl, 5, 30.0) == [2, 3, 4, 2, 3]
    with pytest.raises(TrajectoryError):
        spread_targets(cl, 2, 0.5)  # 6.5 mm of insertion reaches no branch's end


def test_lumen_poses_inside(airway, rc):
    poses = sample_lumen_poses(airway, np.random.default_rng(0), 150)
    c = np.array([p.t for p in poses])
    _check_inside(airway, rc, c)
    index = CenterlineIndex(airway.centerline)
    _, i = index.nearest(c)
    z = np.array([p.R[:, 2] for p in poses])
    along = np.abs(np.einsum("ij,ij->i", z, index.tangent[i]))
    # (the nearest centerline sample may belong to a sibling branch near a junction)
    assert np.median(along) > np.cos(LumenPoseParams().tilt_max) and np.mean(along > 0.5) > 0.9
    R = np.array([p.R for p in poses])
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    # branches other than the trachea are visited
    assert len(set(index.branch[i].tolist())) >= 4


def test_inside_lumen_rejects_outside(airway, rc):
    index = CenterlineIndex(small_centerline())
    pts = np.array([[0.0, 0.0, 0.02], [0.0, 0.0065, 0.02], [0.0, 0.02, 0.02], [0.0, 0.0, 0.06]])
    ok = inside_lumen(pts, index, rc)
    assert ok.tolist() == [True, False, False, False]


def test_a_scope_keeps_its_radius_from_the_wall_and_enters_only_what_it_fits(airway, rc):
    """TrajectoryParams.scope_diameter: the tip's centre stays a scope radius inside the lumen
    (at least 0.8 of it from the wall), the path only passes bronchi at least its radius + slack
    wide (here the 3.5 mm daughters are out of a 7 mm scope's reach), a scope wider than the
    trachea goes nowhere; 0 (a point camera) is the plain procedure."""
    from bronchopt_ros.sim.trajectory import TrajectoryError

    p = TrajectoryParams(scope_diameter=7e-3)
    assert p.target_radius == pytest.approx(3.6e-3) and p.max_light_offset == pytest.approx(3.2e-3)
    assert p.scope_clearance == pytest.approx(0.8 * 3.5e-3) and TrajectoryParams().scope_clearance == 0.0
    assert TrajectoryParams().max_light_offset == np.inf
    index = CenterlineIndex(airway.centerline)
    for seed in range(4):
        tr = plan_procedure(airway, np.random.default_rng(seed), n_frames=120, params=p, raycaster=rc)
        assert tr.target_leaf in (1, 2) and not {3, 4} & set(tr.path_branches)
        c = tr.centres
        assert np.all(index.clearance(c) > 0.8 * 3.5e-3) and np.all(wall_distance(rc, c) > 0.8 * 3.5e-3)
    point = plan_procedure(airway, np.random.default_rng(0), n_frames=120, raycaster=rc)
    plain = plan_procedure(airway, np.random.default_rng(0), n_frames=120, params=TrajectoryParams(scope_diameter=0.0),
                           raycaster=rc)
    assert all(np.array_equal(x.matrix, y.matrix) for x, y in zip(point.poses, plain.poses))
    assert wall_distance(rc, point.centres).min() < 3.5e-3  # (a point camera goes closer)
    with pytest.raises(TrajectoryError, match="fits in no bronchus"):
        plan_procedure(airway, np.random.default_rng(0), n_frames=30, params=TrajectoryParams(scope_diameter=16e-3),
                       raycaster=rc)
