"""Where the time goes: py-spy's collapsed stacks reduced to a per-function table.

py-spy samples a running interpreter from outside (no instrumentation in the packet
path, so the profile shows the real proportions). Its ``--format raw`` output is one line
per distinct stack, ``frame;frame;...;leaf COUNT``, each frame ``function (file:line)``.
Two views answer two questions: *self* samples (the function was the leaf) say which
code burns the CPU, *inclusive* samples (the function was anywhere on the stack) say
how much a whole step costs, e.g. the engine versus the NFQUEUE library around it.

``python3 -m benchmarks.profile STACKS`` prints the table for a saved file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``handle (/x/localdirector/dataplane/engine.py:97)`` -> ``handle (dataplane/engine.py)``:
    lines merged, paths shortened to their last two parts."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    parts = match["file"].split("/")
    func = match["func"]
    if func.startswith("0x"):
        func = "<no symbol>"  # native frames of a stripped library: one entry per library
    return f"{func} ({'/'.join(parts[-2:])})"


def summarize(stacks: str, top: int = 15, within: str | None = None) -> dict[str, object]:
    """Self and inclusive sample shares of the ``top`` functions of a collapsed profile;
    with ``within`` (a function name such as ``Engine.handle``) only the stacks passing
    through that function count, e.g. to leave out a benchmark's own packet building."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in stacks.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")
                  if not f.startswith(("process ", "thread "))]
        if not frames or (within and not any(f.startswith(f"{within} (") for f in frames)):
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count

    def table(counter: Counter[str]) -> list[dict[str, object]]:
        return [{"function": name, "samples": n, "percent": round(100.0 * n / total, 1)}
                for name, n in counter.most_common(top)]

    return {"samples": total, "within": within, "self": table(self_counts),
            "inclusive": table(incl_counts)}


def record(pid: int, seconds: float, output: Path, rate: int = 250,
           native: bool = False) -> str | None:
    """Sample process ``pid`` for ``seconds``; None on success, else why not (py-spy
    missing, no ptrace permission...).

    Without ``native`` the process is never stopped and time spent in C shows up in the
    Python function that called it. ``native`` also unwinds C frames (which system call,
    which library) at the price of pausing the process for each sample."""
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(rate), "--format", "raw", "--output", str(output),
            "--native" if native else "--nonblocking"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy failed: {exc}"
    if proc.returncode != 0 or not output.exists():
        return f"py-spy failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"
    return None


def format_summary(summary: dict[str, object], title: str) -> str:
    within = f", stacks through {summary['within']} only" if summary.get("within") else ""
    lines = [f"{title} ({summary['samples']} samples{within})"]
    for view in ("self", "inclusive"):
        lines.append(f"  {view}:")
        for row in summary[view]:  # type: ignore[attr-defined]
            lines.append(f"    {row['percent']:5.1f}%  {row['function']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stacks", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--within", metavar="FUNCTION",
                        help="only stacks through FUNCTION (e.g. Engine.handle)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    summary = summarize(args.stacks.read_text(), args.top, args.within)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, str(args.stacks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
