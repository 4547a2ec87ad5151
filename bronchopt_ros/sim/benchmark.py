"""The fixed benchmark: test anatomies (seeds >= 3000, test appearance domain), never used in
training or validation.

::

    <out>/benchmark.json                 what was written, with which parameters
    <out>/framewise/case_<seed>/         short procedures with starts/{easy,medium,hard}.tum
    <out>/tracking/case_<seed>/          full procedures with breathing, no starts

The frame-wise set follows the paper's protocol (:data:`bronchopt_ros.sim.case.START_LEVELS`):
every ``start_every``-th frame of each case gets one start per level, the same frames at every
level. The tracking set holds full procedures (insertion to a target segment, pauses,
retractions, roll, wobble) with breathing and CT-to-body divergence. The two sets use disjoint
anatomies. Writing is resumable: a case folder whose ``case.json`` exists is kept.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .breathing import BreathingParams
from .case import CaseParams, write_case
from .splits import TEST_SEED_START

__all__ = ["BenchmarkParams", "write_benchmark"]


@dataclass
class BenchmarkParams:
    framewise_cases: int = 4
    framewise_frames: int = 100  # frames per frame-wise case
    start_every: int = 4  # one start per level for every k-th frame: 25 per case and level
    tracking_cases: int = 3
    tracking_frames: int = 300  # 10 s at 30 fps
    size: int = 200  # the paper's 200x200 camera
    breathing_amplitude: float = 0.03
    first_seed: int = TEST_SEED_START
    storage: str = "mcap"
    extra: dict = field(default_factory=dict)

    def seeds(self) -> tuple[list[int], list[int]]:
        fw = [self.first_seed + i for i in range(self.framewise_cases)]
        tr = [self.first_seed + 100 + i for i in range(self.tracking_cases)]
        return fw, tr


def write_benchmark(out: str | Path, params: BenchmarkParams | None = None, progress: bool = True) -> dict:
    """Write the benchmark folder; returns (and writes) its ``benchmark.json`` manifest."""
    p = params or BenchmarkParams()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fw_seeds, tr_seeds = p.seeds()
    jobs = [("framewise", s, CaseParams(n_frames=p.framewise_frames, size=p.size, start_every=p.start_every,
                                        breathing=BreathingParams(amplitude=p.breathing_amplitude), storage=p.storage))
            for s in fw_seeds]
    jobs += [("tracking", s, CaseParams(n_frames=p.tracking_frames, size=p.size, starts=False,
                                        breathing=BreathingParams(amplitude=p.breathing_amplitude), storage=p.storage))
             for s in tr_seeds]
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="benchmark", unit="case")
    cases = []
    for kind, seed, cp in it:
        case = out / kind / f"case_{seed}"
        t0 = time.perf_counter()
        if not (case / "case.json").exists():
            write_case(case, seed, cp, progress=progress)
            status = "written"
        else:
            status = "kept"
        info = json.loads((case / "case.json").read_text())
        cases.append({"set": kind, "seed": seed, "path": str(case.relative_to(out)), "frames": info["frames"],
                      "status": status, "seconds": round(time.perf_counter() - t0, 1),
                      "timing": info.get("timing", {})})
    manifest = {"format": "bronchopt-benchmark/1", "params": asdict(p), "cases": cases}
    (out / "benchmark.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest
