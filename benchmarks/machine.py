"""What machine a figure was measured on: a timing means nothing without it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def revision() -> str:
    """The commit measured, ``-dirty`` when the work tree differs from it."""
    root = Path(__file__).resolve().parents[1]
    head = _version(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "localdirector"], capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    return f"{head}-dirty" if dirty else head


def describe(tools: bool = False) -> dict[str, object]:
    """nproc, CPU model, memory, kernel and Python; with ``tools`` also the versions of
    the programs the lab benchmark drives."""
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    info: dict[str, object] = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "revision": revision(),
        # Other work on the machine skews every figure: recorded, not prevented.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if tools:
        info["tools"] = {
            "nginx": _version(["nginx", "-v"]),
            "haproxy": _version(["haproxy", "-v"]),
            "wrk": _version(["wrk", "-v"]),
            "nft": _version(["nft", "--version"]),
        }
    return info


def one_line(info: dict[str, object]) -> str:
    return (f"{info['nproc']} x {info['cpu']}, {info['memory_gib']} GiB, "
            f"Linux {info['kernel']}, Python {info['python']}")
