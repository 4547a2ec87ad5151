"""Helpers shared by the CLI commands that run ROS nodes (navigate, replay, record)."""
from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """config/ of the package: the source tree's, or share/bronchopt_ros/config when installed."""
    here = Path(__file__).resolve().parents[2] / "config"
    if here.is_dir():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("bronchopt_ros")) / "config"
    except Exception:  # noqa: BLE001 - no ament index (plain pip install)
        return here


def ros_args(params_files: list[str | Path], extra: list[str] | None = None) -> list[str]:
    args = ["--ros-args"]
    for f in params_files:
        args += ["--params-file", str(f)]
    return args + list(extra or [])


def localhost_default() -> None:
    """Keep DDS discovery on this machine unless the user chose otherwise."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
