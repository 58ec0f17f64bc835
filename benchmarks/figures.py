"""The command line the lab benchmarks share: `--repeat N`, `--json PATH`, the figures
printed as JSON (and saved where asked), so every script reads and reports alike; and
how the in-process benchmarks (micro, scrape) print a report or JSON (`emit`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def report(doc: str, repeat: int, measure: Callable[[int], dict[str, Any]]) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    text = json.dumps(measure(args.repeat), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def emit(result: dict[str, Any], format_report: Callable[[dict[str, Any]], str],
         json_path: str | None) -> None:
    """`--json -`: the figures as JSON only, on stdout; otherwise the report, and the
    JSON also written to `json_path` when given."""
    text = json.dumps(result, indent=1)
    if json_path == "-":
        print(text)
    else:
        print(format_report(result))
        if json_path:
            Path(json_path).write_text(text + "\n")
