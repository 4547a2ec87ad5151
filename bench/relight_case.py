"""Re-render a simulated case with some of its appearance settings changed, all else the same.

The anatomy, the procedure, the breathing and every other appearance setting come from the
source case's seed and ``case.json``. Only the settings given with ``--set`` change. This is how
session 24 measured what the light guide's offset does to the encoder (docs/performance-notes.md):

    python bench/relight_case.py data/bench/tracking/case_3100 data/diag/case_3100_lo03 \\
        --set light_offset=0.0003
    python bench/bench_floor.py --tracking data/diag/case_3100_lo03 --kinds encoder --work out/diag \\
        --out /tmp/lo03.json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from bronchopt_ros.sim.appearance import Appearance
from bronchopt_ros.sim.breathing import BreathingParams
from bronchopt_ros.sim.case import CaseParams, params_from_json, write_case


def _anatomy(source: Path, info: dict):
    """The source's anatomy: generated again from its parameters (exactly the same), or its mesh."""
    anatomy = info.get("anatomy", {})
    if anatomy.get("source") == "generate_anatomy" and anatomy.get("params"):
        from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy

        return generate_anatomy(info["seed"], params_from_json(AnatomyParams, anatomy["params"]))
    from bronchopt_ros.evaluation import load_case_airway

    return load_case_airway(source)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a case folder written by `bronchopt sim` (with case.json)")
    ap.add_argument("out", help="the new case folder")
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                    help="appearance settings to change (numbers; see bronchopt_ros/sim/appearance.py)")
    args = ap.parse_args(argv)
    info = json.loads((Path(args.source) / "case.json").read_text())
    known = {f.name for f in fields(Appearance)}
    app = asdict(Appearance.from_dict(info["appearance"]))
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in known or not value:
            ap.error(f"--set {item!r}: expected NAME=VALUE with NAME one of the appearance's settings")
        old = app[name]
        try:
            app[name] = (value.lower() in ("1", "true", "yes")) if isinstance(old, bool) else \
                type(old)(float(value)) if isinstance(old, (int, float)) else value
        except ValueError:
            ap.error(f"--set {item!r}: {name} takes a number")
    breathing = params_from_json(BreathingParams, info["breathing"]) if info.get("breathing") else None
    saved = info.get("params", {})
    params = CaseParams(n_frames=info["frames"], size=info["camera"]["width"], fps=info["fps"], breathing=breathing,
                        starts=bool(saved.get("starts", False)), start_every=int(saved.get("start_every", 5)))
    write_case(args.out, info["seed"], params, anatomy=_anatomy(Path(args.source), info), appearance=Appearance(**app))
    print(f"{args.source} -> {args.out}: " + ", ".join(args.set or ["unchanged"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
