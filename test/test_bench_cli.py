"""`bronchopt bench` on a tiny benchmark: the table is written, and a partial re-run keeps the
other part's rows from the earlier run."""
import json

import pytest

from bronchopt_ros.cli import main


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    from bronchopt_ros.sim.benchmark import BenchmarkParams, write_benchmark

    root = tmp_path_factory.mktemp("bench")
    write_benchmark(root, BenchmarkParams(framewise_cases=1, framewise_frames=6, start_every=3, tracking_cases=1,
                                          tracking_frames=6, size=64), progress=False)
    return root


def _run(root, *extra):
    args = ["bench", str(root), "--modes", "depth", "--tracking-modes", "depth", "--realtime-modes",
            "--levels", "easy", *extra]
    assert main(args) == 0
    return json.loads((root / "results" / "bench.json").read_text())


def test_bench_writes_both_parts_and_keeps_the_skipped_one(tiny_bench):
    first = _run(tiny_bench)
    assert first["framewise"]["easy"]["depth"]["n_frames"] == 2
    assert first["tracking"]["depth"]["frames"] == 6
    md = (tiny_bench / "results" / "bench.md").read_text()
    assert "| easy |" in md and "| depth |" in md
    # The tracking rows split by airway generation at the true pose (a 6-frame case: the trachea).
    gens = first["tracking"]["depth"]["by_generation"]
    assert gens["trachea"]["frames"] == 6 and "tracking by airway generation" in md

    # Re-run the tracking only: the frame-wise rows are the first run's, said so.
    first["framewise"]["easy"]["depth"]["marker"] = 1.0  # (so the kept rows are recognisable)
    (tiny_bench / "results" / "bench.json").write_text(json.dumps(first))
    second = _run(tiny_bench, "--no-framewise")
    assert second["framewise"]["easy"]["depth"]["marker"] == 1.0
    assert second["run_at"]["framewise"].endswith("(kept by --no-framewise)")
    assert second["tracking"]["depth"]["frames"] == 6

    # ... and the frame-wise only: the tracking rows are kept.
    second["tracking"]["depth"]["marker"] = 2.0
    (tiny_bench / "results" / "bench.json").write_text(json.dumps(second))
    third = _run(tiny_bench, "--no-tracking")
    assert third["tracking"]["depth"]["marker"] == 2.0
    assert third["run_at"]["tracking"].endswith("(kept by --no-tracking)")
    assert "marker" not in third["framewise"]["easy"]["depth"]
    assert "Tracking rows: run of" in (tiny_bench / "results" / "bench.md").read_text()
