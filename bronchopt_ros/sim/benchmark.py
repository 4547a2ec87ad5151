"""The fixed benchmark: test anatomies (seeds >= 3000, test appearance domain), never used in
training or validation.

::

    <out>/benchmark.json                 what was written, with which parameters
    <out>/framewise/case_<seed>/         procedures with starts/{easy,medium,hard}.tum
    <out>/tracking/case_<seed>/          full procedures with breathing, no starts

The frame-wise set follows the paper's protocol (:data:`bronchopt_ros.sim.case.START_LEVELS`):
every ``start_every``-th frame of each case gets one start per level, the same frames at every
level. The tracking set holds full procedures (insertion to a target segment, pauses,
retractions, roll, wobble) with breathing and CT-to-body divergence. The two sets use disjoint
anatomies. Both sets' procedures are whole 30 s insertions down to a target of generation 3 or
deeper, so their frames come from the trachea, the main bronchi and beyond, as the paper's
sequences do. (Until session 13 the frame-wise cases were the first 100 frames, 3.3 s, of which
99 % lay in the trachea, where one frame leaves the position along the tube and the roll least
determined; the tracking cases were 10 s, 75-80 % in the trachea.) Writing is resumable: a case
folder whose ``case.json`` exists is kept, unless it was written with other frames, size or start
spacing than asked for (then it is written again).
"""
from __future__ import annotations

import json
import shutil
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
    framewise_frames: int = 900  # frames per frame-wise case: a whole 30 s insertion
    start_every: int = 36  # one start per level for every k-th frame: 25 per case and level
    tracking_cases: int = 3
    tracking_frames: int = 900  # 30 s at 30 fps: a whole insertion
    size: int = 200  # the paper's 200x200 camera
    breathing_amplitude: float = 0.03
    first_seed: int = TEST_SEED_START
    storage: str = "mcap"
    extra: dict = field(default_factory=dict)

    def seeds(self) -> tuple[list[int], list[int]]:
        fw = [self.first_seed + i for i in range(self.framewise_cases)]
        tr = [self.first_seed + 100 + i for i in range(self.tracking_cases)]
        return fw, tr


def _matches(case: Path, cp: CaseParams) -> bool:
    """Whether the case folder was written with ``cp``'s frames, size and starts."""
    info = json.loads((case / "case.json").read_text())
    was = info.get("params", {})
    return (info.get("frames") == cp.n_frames and was.get("size") == cp.size and was.get("starts") == cp.starts
            and (not cp.starts or was.get("start_every") == cp.start_every))


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
        done = (case / "case.json").exists()
        if done and _matches(case, cp):
            status = "kept"
        else:
            if done:  # written with other settings than asked for
                shutil.rmtree(case)
            write_case(case, seed, cp, progress=progress)
            status = "rewritten" if done else "written"
        info = json.loads((case / "case.json").read_text())
        cases.append({"set": kind, "seed": seed, "path": str(case.relative_to(out)), "frames": info["frames"],
                      "status": status, "seconds": round(time.perf_counter() - t0, 1),
                      "timing": info.get("timing", {})})
    manifest = {"format": "bronchopt-benchmark/1", "params": asdict(p), "cases": cases}
    (out / "benchmark.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest
