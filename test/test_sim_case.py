"""``bronchopt sim``: a case folder exactly as CONTRACT.md says, the frame-wise starts at the
paper's levels, reproducibility, the contact sheet and the (resumable) benchmark writer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from bronchopt_ros.cli import main
from bronchopt_ros.io.bag import read_case_bag
from bronchopt_ros.io.tum import read_tum
from bronchopt_ros.sim.case import START_LEVELS

ARGS = ["--frames", "20", "--size", "64", "--generations", "3", "--start-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "case_3001"
    assert main(["sim", "case", "--seed", "3001", "--out", str(out), *ARGS]) == 0
    return out


def test_case_follows_the_contract(case):
    info = json.loads((case / "case.json").read_text())
    assert info["split"] == "test" and info["appearance_domain"] == "test" and info["frames"] == 20
    mesh = trimesh.load(case / "airway.ply")
    assert len(mesh.faces) > 1000
    assert np.ptp(mesh.vertices, axis=0).max() > 50.0  # millimetres: a trachea alone is ~100 mm
    assert (case / "airway.ply.centerline.json").exists()
    events = list(read_case_bag(case / "procedure"))
    kinds = [e.kind for e in events]
    assert kinds.count("image") == 20 and kinds.count("camera_info") == 20 and kinds.count("pose_gt") == 20
    assert kinds.count("initialpose") == 1 and kinds.index("initialpose") < kinds.index("image")
    assert "error" not in kinds
    img_stamps = sorted(e.stamp_ns for e in events if e.kind == "image")
    assert sorted(e.stamp_ns for e in events if e.kind == "camera_info") == img_stamps
    stamps, truth = read_tum(case / "truth.tum")
    assert len(truth) == 20 and np.allclose(np.asarray(stamps), np.asarray(img_stamps) * 1e-9, atol=1e-4)


def test_starts_at_the_paper_levels_inside_the_lumen(case):
    from bronchopt_ros.airway.loading import load_airway_with_centerline
    from bronchopt_ros.render.raycast import Raycaster
    from bronchopt_ros.sim.trajectory import CenterlineIndex, inside_lumen

    stamps, truth = read_tum(case / "truth.tum")
    by_stamp = {round(s, 3): p for s, p in zip(stamps, truth)}
    airway = load_airway_with_centerline(case / "airway.ply")
    rc = Raycaster(airway.vertices, airway.faces)
    index = CenterlineIndex(airway.centerline)
    frames = None
    for level, (mt, mr) in START_LEVELS.items():
        s_stamps, starts = read_tum(case / "starts" / f"{level}.tum")
        assert frames is None or np.allclose(s_stamps, frames)  # the same frames at every level
        frames = s_stamps
        assert len(starts) == 10
        gts = [by_stamp[round(s, 3)] for s in s_stamps]
        te = np.mean([g.translation_error(s) for g, s in zip(gts, starts)])
        re = np.mean([g.rotation_error(s) for g, s in zip(gts, starts)])
        assert te == pytest.approx(mt, rel=0.25) and re == pytest.approx(mr, rel=0.25)
        assert inside_lumen(np.array([s.t for s in starts]), index, rc, margin=0.0, margin_frac=0.0).all()


def test_reproducible_and_preview(case, tmp_path):
    again = tmp_path / "again"
    assert main(["sim", "case", "--seed", "3001", "--out", str(again), *ARGS]) == 0
    assert (again / "truth.tum").read_text() == (case / "truth.tum").read_text()
    assert (again / "starts" / "hard.tum").read_text() == (case / "starts" / "hard.tum").read_text()
    assert main(["sim", "preview", str(case), "-n", "4", "--out", str(tmp_path / "p.png")]) == 0
    import cv2

    sheet = cv2.imread(str(tmp_path / "p.png"))
    assert sheet is not None and sheet.shape[0] > 64 and sheet.std() > 5
    assert main(["sim", "preview", str(tmp_path / "nothing")]) == 2


def test_case_through_a_given_airway(case, tmp_path):
    """``--airway``: a procedure through the user's own airway mesh (here the fixture case's, without
    its centerline, which is then computed from the mesh); the seed still picks procedure and
    appearance, and case.json says where the airway came from."""
    import shutil

    mesh = tmp_path / "patient.ply"
    shutil.copy(case / "airway.ply", mesh)
    out = tmp_path / "given"
    assert main(["sim", "case", "--seed", "3002", "--out", str(out), "--airway", str(mesh), "--frames", "12",
                 "--size", "64", "--no-starts", "--quiet"]) == 0
    info = json.loads((out / "case.json").read_text())
    assert info["anatomy"] == {"source": "given airway", "file": str(mesh)} and info["frames"] == 12
    assert info["appearance_domain"] == "test" and info["centerline_branches"] > 1
    given, written = trimesh.load(mesh), trimesh.load(out / "airway.ply")
    assert len(written.faces) == len(given.faces) and np.allclose(written.bounds, given.bounds, atol=1e-3)
    stamps, truth = read_tum(out / "truth.tum")
    assert len(truth) == 12 and (read_tum(case / "truth.tum")[1][0].t != truth[0].t).any()  # its own procedure
    assert main(["sim", "case", "--seed", "3002", "--out", str(tmp_path / "x"), "--airway",
                 str(tmp_path / "missing.stl"), "--quiet"]) == 2
    assert main(["sim", "case", "--seed", "3002", "--out", str(tmp_path / "y"), "--airway", str(mesh),
                 "--anatomy", "lumen_ellipticity=0.1", "--quiet"]) == 2  # a given airway is not reshaped
    assert not (tmp_path / "y").exists()


def test_case_with_anatomy_overrides(tmp_path):
    """``--anatomy``: the generated airway made with AnatomyParams overrides (here shaped lumens, a
    narrow trachea), recorded in case.json; a typo is refused, nothing written."""
    out = tmp_path / "shaped"
    assert main(["sim", "case", "--seed", "3001", "--out", str(out), "--frames", "4", "--size", "48",
                 "--anatomy", "lumen_ellipticity=0.12,lumen_lobes=0.15,trachea_diameter_mm=14",
                 "--generations", "3", "--no-starts", "--quiet"]) == 0
    params = json.loads((out / "case.json").read_text())["anatomy"]["params"]
    assert params["lumen_ellipticity"] == 0.12 and params["lumen_lobes"] == 0.15
    assert params["trachea_diameter_mm"] == 14.0 and params["generations"] == 3
    for bad in ("trachea_diameter=14", "generations=eight", "lumen_lobes"):
        assert main(["sim", "case", "--seed", "3001", "--out", str(tmp_path / "bad"), "--anatomy", bad,
                     "--quiet"]) == 2
    assert not (tmp_path / "bad").exists()


def test_training_seed_refused_for_test_split():
    from bronchopt_ros.sim.splits import check_split

    with pytest.raises(ValueError):
        check_split(1000, "test")


def test_benchmark_writer_is_resumable(tmp_path):
    from bronchopt_ros.cli.bench import find_cases
    from bronchopt_ros.sim.benchmark import BenchmarkParams, write_benchmark

    p = BenchmarkParams(framewise_cases=1, framewise_frames=6, start_every=3, tracking_cases=1, tracking_frames=8,
                        size=48)
    m = write_benchmark(tmp_path, p, progress=False)
    assert [c["status"] for c in m["cases"]] == ["written", "written"]
    assert all(c["seed"] >= 3000 for c in m["cases"])
    framewise, tracking = find_cases(tmp_path)
    assert len(framewise) == 1 and len(tracking) == 1 and not (tracking[0] / "starts").exists()
    m2 = write_benchmark(tmp_path, p, progress=False)
    assert [c["status"] for c in m2["cases"]] == ["kept", "kept"]
    # A case written with other settings than asked for is not silently kept.
    p3 = BenchmarkParams(framewise_cases=1, framewise_frames=9, start_every=3, tracking_cases=1, tracking_frames=8,
                         size=48)
    m3 = write_benchmark(tmp_path, p3, progress=False)
    assert [c["status"] for c in m3["cases"]] == ["rewritten", "kept"]
    assert m3["cases"][0]["frames"] == 9


def test_case_filmed_by_a_scope_of_given_size(tmp_path):
    """``--scope-diameter``: recorded in case.json, and the test appearance's light guide (0.8-1.5 mm
    off the lens) is kept inside a 2 mm tip (at most 1 - 0.3 mm off); a size no scope has is refused."""
    out = tmp_path / "scope"
    assert main(["sim", "case", "--seed", "3001", "--out", str(out), "--frames", "4", "--size", "48",
                 "--generations", "3", "--scope-diameter", "2", "--no-starts", "--quiet"]) == 0
    info = json.loads((out / "case.json").read_text())
    assert info["trajectory"]["params"]["scope_diameter"] == pytest.approx(2e-3)
    assert info["appearance"]["light_offset"] == pytest.approx(0.7e-3)
    assert main(["sim", "case", "--seed", "3001", "--out", str(tmp_path / "bad"), "--scope-diameter", "-1",
                 "--quiet"]) == 2
