"""Printing shared by the bench scripts (run as ``python bench/NAME.py``: this folder is on the path)."""
from __future__ import annotations

import json
import time
from pathlib import Path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: ``header`` cells, then one line per row (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(path: str | None, payload: dict) -> None:
    """``payload`` with today's date as JSON at ``path`` (None: nothing), and say so."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **payload}, indent=2))
        print(f"written {path}")
