"""A stall on busy cores, replayed reproducibly (issue 8: `make demo` on a loaded machine).

The case is replayed as a live camera (``bronchopt eval --realtime S``) with a fixed time per
processed frame, registrations landing ``--registration-s`` after their frame and skipped-frame
follows costing ``--follow-s`` (busy cores), and one frame ``--at`` seconds in taking ``--stall``
seconds longer. Prints the errors with and without the stall and, with ``--trace``, each frame
around it.

    python bench/bench_stall.py out/demo/case --realtime 0.08 --registration-s 0.16 \\
        --follow-s 0.05 --at 2.6 --stall 0.27 --trace

Session 14 (the demo procedure, its fast advance at ~28 mm/s): the frame after the stall had lost
its corners; registered from the last estimate it was 8.8 mm off and went LOST (blind_probe), and
three frames later the tracker recovered where that stale estimate was, ~9 mm behind along the
bronchus, and stayed there TRACKING (4.90 mm / 43 % against 1.43 mm / 70 % without the stall).
Registered from where the camera's last velocity takes it (and coasting there while LOST), 1.3 mm
after the stall (3.17 mm / 49 %, a later frame 15 mm off; without the stall 1.23 mm / 72 %).
Those figures are of the demo case `make demo` wrote then: on the one it writes in session 19 the
code of that commit (178356f), session 18's and session 19's all give 1.67 mm / 58 % without the
stall and 2.32 mm / 51 % with it - the procedure changed, not the tracker.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import bronchopt_ros.evaluation as ev
from bronchopt_ros.metrics import is_success
from bronchopt_ros.cli.evaluate import pipeline_from_yaml
from bronchopt_ros.pipeline import load_default_encoder
from bronchopt_ros.threads import limit_threads


class _StalledSlot(ev._NewestFrameSlot):
    """The replay's frame slot, with the first frame started ``at`` s in or later taking ``stall`` s more."""

    at, stall = 0.0, 0.0

    def done(self, measured_s: float) -> None:
        super().done(measured_s)
        if not hasattr(self, "_t0"):
            self._t0 = self.start
        if self.stall and not getattr(self, "_hit", False) and self.start - self._t0 >= self.at:
            self._hit = True
            self.busy_until += self.stall


def run(args, encoder, stall: float, cfg) -> list[tuple]:
    _StalledSlot.at, _StalledSlot.stall = args.at, stall
    slot_cls, ev._NewestFrameSlot = ev._NewestFrameSlot, _StalledSlot
    try:
        records, _, tracker = ev.track_case(args.case, cfg, encoder=encoder, progress=False,
                                            realtime=args.realtime, registration_s=args.registration_s,
                                            follow_s=args.follow_s)
    finally:
        ev._NewestFrameSlot = slot_cls
    tracker.close()
    return [(r.stamp, r.pose, r.truth, r.state) for r in records]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case")
    ap.add_argument("--realtime", type=float, default=0.08, help="seconds per processed frame")
    ap.add_argument("--registration-s", type=float, default=0.16)
    ap.add_argument("--follow-s", type=float, default=0.05)
    ap.add_argument("--at", type=float, default=2.6, help="seconds into the replay")
    ap.add_argument("--stall", type=float, default=0.27, help="extra seconds of that frame")
    ap.add_argument("--trace", action="store_true", help="print the frames from 0.5 s before to 1.5 s after")
    ap.add_argument("--config", default=None, help="navigator YAML (default config/navigator.yaml)")
    args = ap.parse_args(argv)
    limit_threads()
    cfg = pipeline_from_yaml(args.config)
    encoder = load_default_encoder(cfg)
    for stall in (0.0, args.stall):
        rows = run(args, encoder, stall, cfg)
        t0 = rows[0][0]
        err = np.array([p.translation_error(g) * 1e3 for _, p, g, _ in rows])
        ok = np.array([is_success(p, g) for _, p, g, _ in rows])
        tracking = np.array([s == 1 for *_, s in rows])
        print(f"{Path(args.case).name}: stall {stall:.2f} s at {args.at:.2f} s: {len(rows)} frames, "
              f"{err.mean():.2f} mm (max {err.max():.1f}), success {100 * ok.mean():.0f} %, "
              f"wrong while TRACKING {int((~ok & tracking).sum())}")
        if args.trace and stall:
            for (s, p, g, st), e in zip(rows, err):
                if args.at - 0.5 <= s - t0 <= args.at + 1.5:
                    print(f"  t={s - t0:6.3f} s  {e:5.2f} mm  {np.degrees(p.rotation_error(g)):5.1f} deg  state {st}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
