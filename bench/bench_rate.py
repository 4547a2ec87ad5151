"""Tracking against the processing rate: what a slow or loaded machine gets (issue 8).

A live camera outruns a slow tracker: the node takes the newest frame and the odometry follows a
few of the skipped ones within a share of the gap. Each case is replayed as such a camera with a
fixed time per processed frame (``bronchopt eval --realtime S``: reproducible, time is the
replay's), at several processing rates, with the default settings and with ``tracker.blind_probe``
off. Reported per rate: the frames processed, the errors over them, and the frames that were wrong
(beyond 5 mm or 10 deg) while reported TRACKING - the ones a user would have trusted.

    python bench/bench_rate.py out/demo/case --out bench/results/rate.json

(``make demo`` writes out/demo/case, the demo procedure: the scope moves 20-30 mm/s and turns
20-40 deg/s.) Each run takes the procedure's duration in wall time (the replay sleeps until each
frame is due).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from bronchopt_ros.evaluation import summarise, track_case
from bronchopt_ros.pipeline import PipelineConfig, load_default_encoder
from bronchopt_ros.threads import limit_threads
from _tables import markdown_table, write_results  # (bench/: the script's own folder)

RATES = (30.0, 20.0, 15.0, 12.5, 10.0, 8.0, 6.0, 5.0)  # processed frames per second


def run(case: str, encoder, rate: float, blind_probe: bool) -> dict:
    cfg = PipelineConfig()
    cfg = replace(cfg, tracker=replace(cfg.tracker, blind_probe=blind_probe))
    records, _, tracker = track_case(case, cfg, encoder=encoder, progress=False, realtime=1.0 / rate)
    m = summarise(records)
    out = {k: m[k] for k in ("frames", "trans_err_mm_mean", "rot_err_rad_mean", "success_rate", "lost_frames",
                             "wrong_while_tracking")}
    out["blind_lost"] = int(tracker.blind_lost)
    tracker.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", help="case folders (airway.ply, procedure/, truth.tum)")
    ap.add_argument("--rates", type=float, nargs="+", default=list(RATES), help="processed frames per second")
    ap.add_argument("--out", help="JSON file for the results")
    args = ap.parse_args(argv)
    limit_threads()
    encoder = load_default_encoder(PipelineConfig())
    results = []
    t0 = time.time()
    for case in args.cases:
        for rate in args.rates:
            row = {"case": Path(case).name, "rate": rate}
            for probe in (True, False):
                row["default" if probe else "blind_probe_off"] = run(case, encoder, rate, probe)
            results.append(row)
            d, o = row["default"], row["blind_probe_off"]
            print(f"{row['case']} {rate:5.1f} frames/s: {d['frames']} processed, {d['trans_err_mm_mean']:.2f} mm "
                  f"{d['rot_err_rad_mean']:.3f} rad {100 * d['success_rate']:.0f} %, lost {d['lost_frames']}, "
                  f"wrong while TRACKING {d['wrong_while_tracking']} (blind_probe off: {o['wrong_while_tracking']}, "
                  f"{o['trans_err_mm_mean']:.2f} mm {100 * o['success_rate']:.0f} %)", flush=True)
    print()
    print(markdown_table(
        ["case", "processed frames/s", "frames", "mm", "rad", "success", "LOST frames", "wrong while TRACKING",
         "... with blind_probe off"],
        [[row["case"], f"{row['rate']:g}", d["frames"], f"{d['trans_err_mm_mean']:.2f}", f"{d['rot_err_rad_mean']:.3f}",
          f"{100 * d['success_rate']:.0f} %", d["lost_frames"], d["wrong_while_tracking"], o["wrong_while_tracking"]]
         for row in results for d, o in [(row["default"], row["blind_probe_off"])]]))
    print(f"\n({time.time() - t0:.0f} s)")
    write_results(args.out, {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
