"""The microbenchmark script runs end to end at toy sizes and reports well-formed figures.

Only the shape of the output is checked, never a timing: a slow machine must not fail
the suite (the figures themselves belong in docs/benchmarks.rst)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("median_us", "min_us", "max_us", "p99_batch_us", "max_batch_us")


def _micro(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.micro", "--assigns", "300", "--conns", "3000",
         "--samples", "400", "--batch", "50", "--mem-conns", "500", "--repeat", "2", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def _assert_timed(figure: dict) -> None:
    for key in TIMED:
        assert isinstance(figure[key], (int, float)) and figure[key] > 0, (key, figure)
    assert figure["min_us"] <= figure["median_us"] <= figure["max_us"]
    assert figure["repeats"] == 2


def test_micro_json_is_well_formed() -> None:
    proc = _micro("--json", "-")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)

    assert result["config"]["assigns"] == 300
    assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]
    assert result["populate"]["connections"] == 3000
    # Every SYN of the timed phases opened a connection of its own: 3000 populated, then
    # per repeat 400 SYNs and 40 short connections (plus the probe packet's reuse of one).
    assert result["live_connections_at_end"] == 3000 + 2 * (400 + 40)
    for figure in (result["decision"]["decide"], result["decision"]["lookup_virtual"],
                   result["syn_packet"], result["established"]["translate_in"],
                   result["established"]["translate_out"], result["lifecycle"],
                   *result["floor"].values()):
        _assert_timed(figure)
    assert result["syn_packet"]["operations"] == 800

    assert result["gc"]["full_collection_ms"] >= 0
    assert result["gc"]["frozen_collection_ms"] >= 0
    assert result["gc"]["full_collections_while_timing"] >= 0

    memory = result["memory"]
    assert memory["connections"] == 500
    # A connection costs at least its own object; a figure below that would be a broken
    # measurement, not a fast machine.
    assert memory["bytes_per_connection"] > 100
    assert memory["top_sites"] and all(site["site"].count(":") == 1 for site in memory["top_sites"])

    targets = result["targets"]
    assert set(targets) == {"syn_decision_us", "translate_us", "bytes_per_connection"}
    for entry in targets.values():
        assert entry["met"] == (entry["measured"] <= entry["target"])


def test_micro_text_report_names_every_figure() -> None:
    proc = _micro()
    assert proc.returncode == 0, proc.stderr
    for label in ("SYN decision", "SYN packet", "established client->real",
                  "established real->client", "short connection", "bytes per connection",
                  "full collection"):
        assert label in proc.stdout


def test_scrape_benchmark_json_is_well_formed() -> None:
    """benchmarks.scrape at toy sizes: every arm measured, the scrapers really scraped
    (the default exposition small, the detailed one with a series per entry), the
    ratios against the same round's baseline."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scrape", "--assigns", "300", "--conns", "300",
         "--phase", "1.5", "--repeat", "2", "--json", "-"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    arms = json.loads(proc.stdout)["arms"]
    assert set(arms) == {"baseline", "every-1s", "every-1s-detail", "flood-4"}
    assert arms["baseline"]["ratio"] == 1.0
    for fig in arms.values():
        assert fig["min_pps"] <= fig["pps"] <= fig["max_pps"] and fig["pps"] > 0
        assert fig["min_ratio"] <= fig["ratio"] <= fig["max_ratio"]
    assert arms["every-1s"]["scrapes"] >= 1 and arms["flood-4"]["scrapes"] > 4
    extra = arms["every-1s-detail"]["bytes"] - arms["every-1s"]["bytes"]
    assert 0 < arms["every-1s"]["bytes"] < 50_000 and extra > 300 * 60   # 300 series
