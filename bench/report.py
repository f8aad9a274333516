"""Shared output for benchmarks: a plain-text table on stdout and a JSON file in bench/results/."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protocol.fileio import atomic_write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as a fixed-width table; floats get four significant digits."""

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [list(map(str, header))] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` with machine facts to ``bench/results/<name>.json`` atomically."""
    payload = {
        "benchmark": name,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "system": platform.platform(),
        },
        **result,
    }
    path = atomic_write_json(RESULTS_DIR / f"{name}.json", payload)
    print(f"wrote {path.relative_to(RESULTS_DIR.parent.parent)}")
    return path
