"""Bar chart of requests/s per contender from a results file of ``benchmarks.run``:
``python3 -m benchmarks.plot [RESULTS.json] [-o docs/benchmarks-requests.png]``.

Bars are the medians over the runs, whiskers their min-max, and each bar is labelled
with its ratio to kernel NAT, the comparison the targets are stated in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a lab host
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
PANELS = [("keepalive.requests_per_s", "keep-alive requests/s"),
          ("close.connections_per_s", "new connections/s (Connection: close)")]
TICKS = {"localdirector": "localdirector\nuserspace",
         "localdirector-fastpath": "localdirector\nfastpath",
         "localdirector-kernel": "localdirector\nfastpath\nkernel",
         "nfqueue-null": "nfqueue-null\n(diagnostic)",
         "nfqueue-null-own": "nfqueue-null\nown binding\n(diagnostic)",
         "nfqueue-null-own-2": "nfqueue-null\nown binding, 2 processes\n(diagnostic)"}
COLOURS = {"direct": "#8c8c8c", "kernel-nat": "#4c72b0", "haproxy": "#dd8452",
           "localdirector": "#55a868", "localdirector-fastpath": "#2f7d4a",
           "localdirector-kernel": "#1b4d2c", "nfqueue-null": "#c4ad66",
           "nfqueue-null-own": "#a89350", "nfqueue-null-own-2": "#8c7a43"}


def plot(result: dict, output: Path) -> None:
    names = list(result["contenders"])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 5.0))
    for ax, (key, title) in zip(axes, PANELS):
        stats = result["summary"][key]["contenders"]
        medians = [stats[n]["median"] if n in stats else 0.0 for n in names]
        low = [stats[n]["median"] - stats[n]["min"] if n in stats else 0.0 for n in names]
        high = [stats[n]["max"] - stats[n]["median"] if n in stats else 0.0 for n in names]
        bars = ax.bar(names, medians, yerr=[low, high], capsize=4,
                      color=[COLOURS.get(n, "#999999") for n in names])
        for bar, name, top in zip(bars, names, (m + h for m, h in zip(medians, high))):
            ratio = stats[name]["ratio_to_kernel_nat"] if name in stats else None
            label = "unavailable" if name not in stats else (
                f"{ratio:.2f}x NAT" if ratio is not None else "")
            # Above the whisker, so the label never sits on it.
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, top),
                        xytext=(0, 4), textcoords="offset points", ha="center", fontsize=9)
        ax.set_xticks(range(len(names)), [TICKS.get(n, n) for n in names], fontsize=8)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(result["summary"][key]["unit"])
        ax.set_ylim(0, max(m + h for m, h in zip(medians, high)) * 1.18 if medians else 1)
        ax.grid(axis="y", alpha=0.3)
    config, info = result["config"], result["machine"]
    fig.suptitle(f"median of {config['runs']} interleaved runs x {config['duration']:g} s, "
                 f"whiskers min-max; {info['nproc']} x {info['cpu']}, Linux {info['kernel']}",
                 fontsize=9)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.plot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=HERE / "results.json")
    parser.add_argument("-o", "--output", type=Path,
                        default=HERE.parent / "docs" / "benchmarks-requests.png")
    args = parser.parse_args(argv)
    plot(json.loads(args.results.read_text()), args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
