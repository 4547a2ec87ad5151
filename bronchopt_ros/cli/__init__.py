"""The ``bronchopt`` command-line tool.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)`` (which registers the subcommand and sets
``func`` on its parser). Modules are imported lazily by name so that
``bronchopt --help`` stays fast and a subcommand's heavy imports (torch,
rclpy) happen only when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "sim": ("bronchopt_ros.cli.sim", "synthetic airways, procedures and benchmark cases"),
    "train": ("bronchopt_ros.cli.train", "train the encoder on synthetic data"),
    "eval": ("bronchopt_ros.cli.evaluate", "run the tracker over a case offline and score it"),
    "bench": ("bronchopt_ros.cli.bench", "run a benchmark folder and print the paper-style table"),
    "replay": ("bronchopt_ros.cli.replay", "play a rosbag2 into the ROS graph (ros2 bag play stand-in)"),
    "record": ("bronchopt_ros.cli.record", "record the navigator's outputs to a rosbag2"),
    "navigate": ("bronchopt_ros.cli.navigate", "start the navigation graph (ros2 launch stand-in)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bronchopt", description="BronchOpt ROS: bronchoscope localisation "
                                     "by 2D-3D registration of endoscope video to the CT airway.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            sub.add_parser(name, help=help_ + " (not available yet)")
            continue
        mod.add_parser(sub, name, help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from ..threads import limit_threads

    limit_threads()  # one BLAS thread: torch threads are set where they matter (see threads.py)
    # Import only the module of the subcommand asked for (fast --help, light imports).
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
