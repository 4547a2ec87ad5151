"""Declare ROS parameters from a table of (name, default, description, range) in one place."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


def declare(node, name: str, default: Any, description: str, range_: tuple | None = None,
            read_only: bool = False) -> Any:
    """Declare one parameter with a descriptor (description, numeric range) and return its value."""
    desc = ParameterDescriptor(description=description, read_only=read_only)
    if range_ is not None and isinstance(default, bool) is False:
        lo, hi = range_
        if isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return node.declare_parameter(name, default, desc).value


def declare_dataclass(node, prefix: str, cfg, docs: dict[str, tuple[str, tuple | None]]):
    """Declare ``prefix.<field>`` for every field of the config dataclass ``cfg`` and return a copy
    of it with the values the node was given (YAML, ``-p``). ``docs`` maps field -> (description,
    range or None); every field must be documented."""
    values = {}
    for f in fields(cfg):
        if f.name.startswith("_"):
            continue
        default = getattr(cfg, f.name)
        if isinstance(default, tuple):
            default = list(default)
        description, range_ = docs[f.name]
        value = declare(node, f"{prefix}.{f.name}", default, description, range_)
        if isinstance(getattr(cfg, f.name), tuple):
            value = tuple(value)
        values[f.name] = value
    return type(cfg)(**values)
