"""The command line the lab benchmarks share: `--repeat N`, `--json PATH`, the figures
printed as JSON (and saved where asked), so every script reads and reports alike."""

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
