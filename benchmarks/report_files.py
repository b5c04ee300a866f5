"""Where every benchmark leaves its figures: ``<out>/<name>.json`` and ``<name>.md``, the table also printed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from brr.atomic import atomic_write_text


def utc_stamp() -> str:
    """The run's time, as every results file name starts."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_report(out: Path, name: str, document: dict | list, table: str | None = None) -> None:
    """Write the JSON document (and the Markdown table, printed too), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(document, indent=2, default=float) + "\n")
    if table is not None:
        atomic_write_text(out / f"{name}.md", table + "\n")
        print(table)
