"""Tracking a video that drops frames (issue 8: "the video drops frames").

Each case's video loses a run of 1 to ``--max-drop`` consecutive frames every 0.7-1.5 s
(``--every``; the schedule is seeded by the case's number, so every variant sees the same gaps).
The tracker never sees the lost frames; every frame it does see is registered, as in
``bronchopt eval``. Each variant is the navigator config (``--config``) with some settings
changed (``--variant LABEL:SECTION.KEY=VALUE,...``; ``shipped`` alone: as it is), run over the
same cases. Printed per variant, pooled over the cases: the frames, those wrong while TRACKING
(beyond 5 mm or 10 deg: a user would have trusted them), those not TRACKING at all and those of
them at a right pose (a false LOST), the longest stretch not TRACKING, the mean errors and the
success rate; per case with ``--per-case``.

    python bench/bench_drops.py data/val/case_25* data/deep/case_251[012] data/narrow/case_253* \\
        data/anatomy_lidc487_val/case_29* data/anatomy_lidc487_scope2.8_val/case_29* \\
        --variant shipped "no continuity:tracker.continuity_frames=0" \\
        "no gap zoom:odometry.gap_step_s=10" --out bench/results/drops.json

Resumable: each (variant, case) result is kept in ``--work`` (default out/bench_drops) under a hash
of the variant's settings, the drop schedule and the package's code (``_tracking.settings_hash``),
so a changed tracker runs again. ~6 minutes per variant over those 29 validation procedures (13500
frames) on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import yaml

from bronchopt_ros.evaluation import summarise, track_case
from bronchopt_ros.cli.evaluate import pipeline_from_yaml
from bronchopt_ros.metrics import is_success
from bronchopt_ros.pipeline import load_default_encoder
from bronchopt_ros.threads import limit_threads
from _tables import markdown_table, write_results  # (bench/: the script's own folder)
from _tracking import pooled, settings_hash

KEYS = ("frames", "dropped", "wrong_while_tracking", "lost_frames", "lost_right", "longest_lost_s",
        "trans_err_mm_mean", "rot_err_rad_mean", "success_rate")


class DropSchedule:
    """``__call__(event)`` True for the images a video dropping frames loses: after each
    ``every`` (s, uniform in the range) a run of 1..``max_drop`` frames (uniform), seeded."""

    def __init__(self, seed: int, every: tuple[float, float] = (0.7, 1.5), max_drop: int = 4):
        self.rng = np.random.default_rng(seed)
        self.every, self.max_drop = every, int(max_drop)
        self.next_s: float | None = None
        self.left = 0
        self.dropped = 0

    def __call__(self, event) -> bool:
        t = event.stamp_s
        if self.next_s is None:
            self.next_s = t + self.rng.uniform(*self.every)
        if self.left == 0 and t >= self.next_s:
            self.left = int(self.rng.integers(1, self.max_drop + 1))
            self.next_s = t + self.rng.uniform(*self.every)
        if self.left > 0:
            self.left -= 1
            self.dropped += 1
            return True
        return False


def case_seed(case: str) -> int:
    """The case's number (its folder's last digits), else a hash of its name: the schedule's seed."""
    digits = re.findall(r"\d+", Path(case).name)
    return int(digits[-1]) if digits else zlib.crc32(Path(case).name.encode())


def parse_variant(text: str) -> tuple[str, dict[str, dict]]:
    """``LABEL[:SECTION.KEY=VALUE,...]`` -> (label, {section: {key: value}}), values read as YAML."""
    label, _, rest = text.partition(":")
    changes: dict[str, dict] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("tracker", "odometry", "lighting") or not name or not value:
            raise SystemExit(f"--variant {text!r}: expected SECTION.KEY=VALUE with SECTION tracker, odometry or lighting")
        changes.setdefault(section, {})[name] = yaml.safe_load(value)
    return label.strip(), changes


def variant_config(base, changes: dict[str, dict]):
    """``base`` (PipelineConfig) with ``changes`` applied to its tracker / odometry / lighting."""
    return dataclasses.replace(base, **{s: dataclasses.replace(getattr(base, s), **kv) for s, kv in changes.items()})


def run_case(case: str, cfg, encoder, every: tuple[float, float], max_drop: int) -> dict:
    drops = DropSchedule(case_seed(case), every, max_drop)
    records, _, tracker = track_case(case, cfg, encoder=encoder, progress=False, drop_image=drops)
    tracker.close()
    m = summarise(records)
    m["dropped"] = drops.dropped
    m["lost_right"] = sum(1 for r in records if r.state != 1 and r.pose is not None and r.truth is not None
                          and is_success(r.pose, r.truth))
    return {k: m[k] for k in KEYS}


def pool(rows: list[dict]) -> dict:
    """:func:`_tracking.pooled`, with the drops, the LOST frames at a right pose and the longest stretch."""
    out = pooled(rows)
    out["dropped"] = sum(r["dropped"] for r in rows)
    out["lost_right"] = sum(r["lost_right"] for r in rows)
    out["longest_lost_s"] = max(r["longest_lost_s"] for r in rows)
    return out


def kept_dir(work: Path, cfg, every: tuple[float, float], max_drop: int) -> Path:
    """Where a variant's per-case results are kept: by its settings, the schedule and the code."""
    return work / settings_hash(f"{cfg!r} every={tuple(every)} max_drop={max_drop}")


def cells(m: dict) -> list:
    return [m["frames"], m["dropped"], m["wrong_while_tracking"], m["lost_frames"], m["lost_right"],
            f"{m['longest_lost_s']:.2f}", f"{m['trans_err_mm_mean']:.2f}", f"{m['rot_err_rad_mean']:.3f}",
            f"{100 * m['success_rate']:.1f}"]


def _safe(name: str) -> str:
    """``name`` as a file name (runs of other characters as ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


HEADER = ["frames", "dropped", "wrong while TRACKING", "not TRACKING", "... at a right pose", "longest (s)",
          "mm", "rad", "success %"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--variant", nargs="+", default=["shipped"], help="LABEL[:SECTION.KEY=VALUE,...]")
    ap.add_argument("--config", default=None, help="navigator YAML the variants start from (default: the package's)")
    ap.add_argument("--every", type=float, nargs=2, default=(0.7, 1.5), help="seconds between gaps (range)")
    ap.add_argument("--max-drop", type=int, default=4, help="frames lost per gap, at most")
    ap.add_argument("--work", default="out/bench_drops", help="per (variant, case) results, for resuming")
    ap.add_argument("--per-case", action="store_true")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    limit_threads()
    base = pipeline_from_yaml(args.config)
    variants = [parse_variant(v) for v in args.variant]
    encoder = load_default_encoder(base)
    work = Path(args.work)
    results: dict[str, dict] = {}
    for label, changes in variants:
        cfg = variant_config(base, changes)
        kept = kept_dir(work, cfg, tuple(args.every), args.max_drop)
        by_case = {}
        for case in args.cases:
            f = kept / f"{_safe(case.strip('/'))}.json"
            if f.exists():
                by_case[case] = json.loads(f.read_text())
                continue
            by_case[case] = run_case(case, cfg, encoder, tuple(args.every), args.max_drop)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(by_case[case]))
            print(f"{label}: {case}: " + ", ".join(f"{k} {v:.3g}" for k, v in by_case[case].items()), flush=True)
        results[label] = {"changes": changes, "pooled": pool(list(by_case.values())), "by_case": by_case}
    print(f"\n{len(args.cases)} cases, a gap of 1-{args.max_drop} frames every {args.every[0]}-{args.every[1]} s:")
    print(markdown_table(["variant"] + HEADER, [[label] + cells(r["pooled"]) for label, r in results.items()]))
    if args.per_case:
        for case in args.cases:
            print(f"\n{case}")
            print(markdown_table(["variant"] + HEADER, [[label] + cells(r["by_case"][case]) for label, r in results.items()]))
    write_results(args.out, {"what": "tracking with the video dropping frames (bench/bench_drops.py)",
                             "cases": args.cases, "every_s": list(args.every), "max_drop": args.max_drop,
                             "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
