"""The true depth as the tracker's predictor (a perfect encoder) and bench/bench_floor.py on a real case."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bronchopt_ros.geometry import Camera
from bronchopt_ros.sim.truth_depth import TruthDepth

ROOT = Path(__file__).resolve().parents[1]
CAM = Camera(200, 200, 110.2, 110.3, 100.6, 103.7).scaled(64)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy
    from bronchopt_ros.sim.case import CaseParams, write_case

    case = tmp_path_factory.mktemp("truth") / "case"
    write_case(case, 3006, CaseParams(n_frames=16, size=200, starts=False),
               anatomy=generate_anatomy(3006, AnatomyParams(generations=3)))
    return case


def _stamps(case):
    from bronchopt_ros.io.tum import read_tum

    return read_tum(case / "truth.tum")


def test_the_ct_kind_is_what_the_registration_renders_at_the_truth(case):
    from bronchopt_ros.evaluation import load_case_airway
    from bronchopt_ros.render import make_renderer

    stamps, poses = _stamps(case)
    airway = load_case_airway(case)
    truth = TruthDepth(case, "ct", airway=airway)
    d = truth.depth(CAM, stamps[5])
    r = make_renderer(airway, backend="cpu").render(CAM, poses[5]).depth
    r = r.numpy() if hasattr(r, "numpy") else np.asarray(r)
    both = (d > 0) & (r > 0)
    assert both.mean() > 0.9
    np.testing.assert_allclose(d[both], r[both], rtol=1e-4)


def test_breathing_starts_at_the_cts_state_and_the_divergence_is_always_there(case):
    stamps, _ = _stamps(case)
    airway = TruthDepth(case, "ct").scene.airway
    ct, breath, body = (TruthDepth(case, k, airway=airway) for k in ("ct", "breathing", "body"))
    # The first frame is at end of expiration (the simulator's t = 0): breathing alone is the CT.
    np.testing.assert_allclose(breath.depth(CAM, stamps[0]), ct.depth(CAM, stamps[0]), atol=1e-6)
    # Half a second in, the lung has expanded: the view differs.
    assert np.abs(breath.depth(CAM, stamps[-1]) - ct.depth(CAM, stamps[-1])).max() > 1e-4
    # The CT-to-body divergence is static: the body differs from the CT from the first frame.
    assert np.abs(body.depth(CAM, stamps[0]) - ct.depth(CAM, stamps[0])).max() > 1e-4


def test_bad_arguments_say_what_is_wrong(case, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        TruthDepth(case, "perfect")
    with pytest.raises(FileNotFoundError, match="truth.tum"):
        TruthDepth(tmp_path, "ct")
    with pytest.raises(KeyError, match="no true pose"):
        TruthDepth(case, "ct").pose_at(12.345)
    # A case folder without case.json: the CT's depth is known, the body's motion is not.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("truth.tum", "airway.ply", "airway.ply.centerline.json"):
        (bare / name).write_bytes((case / name).read_bytes())
    assert TruthDepth(bare, "ct").kind == "ct"
    with pytest.raises(FileNotFoundError, match="case.json"):
        TruthDepth(bare, "body")


def test_bench_floor_tracks_with_the_true_depth_and_resumes(case, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_floor", ROOT / "bench" / "bench_floor.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, work = tmp_path / "floor.json", tmp_path / "work"
    argv = ["--tracking", str(case), "--kinds", "ct", "body", "--work", str(work), "--out", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]["tracking"]
    # With the CT's own depth the tracker stays on the truth (within what the first frames'
    # odometry leaves in a straight trachea, where depth hardly sees a move along the tube: 0.9 mm
    # at the first frame, 0.2 mm by the 16th).
    assert rows["ct"]["frames"] == rows["body"]["frames"] == 16
    assert rows["ct"]["success_rate"] == 1.0 and rows["ct"]["wrong_while_tracking"] == 0
    assert rows["ct"]["trans_err_mm_mean"] < 1.0 and rows["ct"]["rot_err_rad_mean"] < 0.1
    # Each run is kept: a second call reads them back, same figures.
    assert len(list(work.glob("*.pkl"))) == 2
    assert bench.main(argv) == 0
    assert json.loads(out.read_text())["rows"]["tracking"] == rows
    # Runs made with other settings are not mixed in: the folder refuses another --config.
    other = tmp_path / "other.yaml"
    other.write_text((ROOT / "config" / "navigator.yaml").read_text().replace("lost_after: 5", "lost_after: 6"))
    with pytest.raises(SystemExit, match="holds runs made with --config"):
        bench.main(argv + ["--config", str(other)])


def test_relight_case_changes_only_the_appearance_setting_given(case, tmp_path):
    from bronchopt_ros.io.bag import read_case_bag

    spec = importlib.util.spec_from_file_location("relight_case", ROOT / "bench" / "relight_case.py")
    relight = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(relight)

    def first_image(c):
        return next(ev.data for ev in read_case_bag(c / "procedure") if ev.kind == "image")

    same, lit = tmp_path / "same", tmp_path / "lit"
    assert relight.main([str(case), str(same)]) == 0
    assert relight.main([str(case), str(lit), "--set", "light_offset=0.0015"]) == 0
    for new in (same, lit):
        assert (new / "truth.tum").read_text() == (case / "truth.tum").read_text()
    before, after = (json.loads((c / "case.json").read_text())["appearance"] for c in (case, lit))
    assert after["light_offset"] == 0.0015
    assert {k: v for k, v in after.items() if k != "light_offset"} == \
        {k: v for k, v in before.items() if k != "light_offset"}
    np.testing.assert_array_equal(first_image(same), first_image(case))
    assert np.abs(first_image(lit).astype(int) - first_image(case).astype(int)).mean() > 1.0
    with pytest.raises(SystemExit):
        relight.main([str(case), str(tmp_path / "bad"), "--set", "no_such_setting=1"])
