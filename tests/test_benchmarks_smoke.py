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
                   result["decision_ipv6"]["decide"],
                   result["decision_ipv6"]["lookup_virtual"], result["syn_packet"], result["established"]["translate_in"],
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
    assert set(targets) == {"syn_decision_us", "syn_decision_ipv6_us", "translate_us",
                            "bytes_per_connection"}
    for entry in targets.values():
        assert entry["met"] == (entry["measured"] <= entry["target"])


def test_micro_text_report_names_every_figure() -> None:
    proc = _micro()
    assert proc.returncode == 0, proc.stderr
    for label in ("SYN decision", "IPv6 SYN decision", "SYN packet", "established client->real",
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


# dnsperf 2.10's statistics, as it printed them for 8 clients against one dnsmasq.
DNSPERF_STATISTICS = """\
Statistics:

  Queries sent:         348097
  Queries completed:    348097 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 348097 (100.00%)
  Average packet size:  request 25, response 55
  Run time (s):         2.005418
  Queries per second:   173578.276449

  Average Latency (s):  0.000476 (min 0.000007, max 0.008553)
  Latency StdDev (s):   0.000625
"""


def test_dnsperf_statistics_read_as_a_load_report() -> None:
    """benchmarks.run's dns workload reads dnsperf as it reads wrk: completed queries,
    lost ones as an error kind, the run's own duration; no statistics, no report."""
    from benchmarks import udp
    assert udp.parse_dnsperf(DNSPERF_STATISTICS) == {
        "requests": 348097, "errors": {"lost": 0}, "duration_us": 2005418,
        "latency_us": {"average": 476.0}}
    assert udp.parse_dnsperf("[Fatal] no query file\n") is None


def test_udp_figures_table_and_goals() -> None:
    """The dns rows: ratios to kernel NAT, the reason a contender has no UDP figure,
    CPU per packet only for a path that queues every packet, and issue 25's goals."""
    from benchmarks import appliance, contenders, report, udp
    figures = {("kernel-nat", "dns"): {"queries_per_s": 100000.0},
               ("localdirector", "dns"): {"queries_per_s": 25000.0, "cpu_us_per_packet": 10.0},
               ("localdirector", "keepalive"): {"requests_per_s": 30000.0,
                                                "cpu_us_per_packet": 12.0},
               ("localdirector-fastpath", "keepalive"): {"requests_per_s": 50000.0,
                                                         "cpu_us_per_packet": 6000.0},
               ("localdirector-fastpath", "dns"): {"queries_per_s": 90000.0}}
    samples = [{"contender": c, "workload": w, **f} for (c, w), f in figures.items()]
    chosen = [contenders.KernelNat(), contenders.HAProxy(), appliance.LocalDirector(),
              appliance.LocalDirectorFastpath()]
    summary = report.summarize_samples(samples, [c.name for c in chosen])
    assert summary["dns.queries_per_s"]["contenders"]["localdirector"][
        "ratio_to_kernel_nat"] == 0.25
    table = report.format_table(summary, chosen)
    assert "haproxy                HAProxy's mode tcp balances TCP only" in table
    assert summary["dns.queries_per_s"]["contenders"]["localdirector-fastpath"][
        "ratio_to_kernel_nat"] == 0.9
    cpu_rows = [line for line in table.splitlines() if "CPU/packet" in line]
    assert [row[25:].split()[0] for row in cpu_rows] == ["localdirector"] * 2, cpu_rows
    goals = udp.format_targets(summary, "kernel-nat")
    assert "kernel-decided queries/s  >= 0.9 x kernel-nat  not measured" in goals
    assert "10.0 us, ratio 1.200  met" in goals


def test_ipv6_beside_ipv4_report() -> None:
    """benchmarks.run --family both: each family's ratios against its own kernel NAT, the
    IPv6-IPv4 difference per path and per run, and the goal (within 0.1) for the
    appliance's paths only; the two families of a contender measured back to back, the
    first of the pair alternating from run to run."""
    from benchmarks import families, report, roster
    from benchmarks.run import _order
    figures = {"kernel-nat": (50000.0, 40000.0), "haproxy": (40000.0, 36000.0),
               "localdirector": (25000.0, 16000.0), "localdirector-kernel": (50000.0, 41000.0)}
    samples = [{"contender": name, "workload": "keepalive", "family": family, "run": run,
                "requests_per_s": pair[index] * (1 + run / 100)}
               for name, pair in figures.items() for run in (1, 2)
               for index, family in enumerate(families.FAMILIES)]
    names = list(figures)
    summaries = {family: report.summarize_samples(
        [s for s in samples if s["family"] == family], names) for family in families.FAMILIES}
    comparison = families.compare(summaries, samples)["keepalive.requests_per_s"]
    assert comparison["kernel_nat_ipv6_over_ipv4"] == 0.8
    rows = comparison["contenders"]
    assert rows["localdirector"] == {"ipv4": 0.5, "ipv6": 0.4, "difference": -0.1,
                                     "run_differences": [-0.1, -0.1], "goal_met": True}
    assert rows["localdirector-kernel"]["difference"] == 0.025
    assert rows["haproxy"]["goal_met"] is None          # a yardstick, no goal
    assert "kernel-nat" not in rows
    table = families.format_comparison({"keepalive.requests_per_s": comparison}, names)
    assert "kernel-nat             IPv6 median 0.800 x IPv4's" in table
    assert ("localdirector               0.500      0.400    -0.100  -0.100..-0.100  met"
            in table), table
    assert families.compare({"ipv4": summaries["ipv4"]}, samples) == {}

    pairs = roster.contenders_of(["kernel-nat", "localdirector"], list(families.FAMILIES))
    assert [c.label for c in _order(pairs, 1, 2)] == [
        "localdirector (ipv6)", "localdirector (ipv4)", "kernel-nat (ipv6)", "kernel-nat (ipv4)"]


def test_ipv6_contenders_configure_their_family(tmp_path: Path) -> None:
    """One class per contender serves both families: the IPv6 appliance's configuration
    binds [2001:db8::10]:80 to the reals' IPv6 addresses (and the appliance accepts it),
    and the IPv6 contenders have no DNS figure (the lab's dnsmasq answers on IPv4)."""
    from benchmarks import appliance, contenders, udp
    from benchmarks.lab import PLAN6
    kernel = appliance.LocalDirectorKernel(PLAN6)
    config = kernel.config()
    assert ("bind [2001:db8::10]:80:0:tcp [2001:db8:1::11]:0:0:tcp [2001:db8:1::12]:0:0:tcp "
            "[2001:db8:1::13]:0:0:tcp") in config
    assert "fastpath [2001:db8::10]:80:0:tcp kernel" in config
    assert "192.0.2" not in config and "203.0.113" not in config
    path = tmp_path / "v6.cfg"
    path.write_text(config)
    check = subprocess.run([sys.executable, "-m", "localdirector", "--check", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert contenders.HAProxy(PLAN6).target(0) == "2001:db8::10"
    assert contenders.Direct(PLAN6).target(4) == "2001:db8:1::12"
    assert udp.no_udp("localdirector", PLAN6)
    assert udp.no_udp("localdirector", contenders.PLAN4) is None


def test_many_reals_contender_and_baseline_twins(tmp_path: Path) -> None:
    """The many-reals contender binds its spare reals, out of service, inside the reals'
    network and none a lab host; the appliance accepts the configuration; and
    --baseline-tree adds, after each appliance's families, twins that run the other
    checkout's appliance under NAME@base."""
    from benchmarks import appliance, families, roster, rulecost
    from benchmarks.lab import PLAN6
    many = appliance.LocalDirectorKernelMaglevMany()
    spares = many.spare_reals()
    assert len(spares) == appliance.SPARE_REALS
    assert spares[0] == "203.0.113.100" and spares[-1] == "203.0.113.199"
    config = many.config()
    assert "real 203.0.113.150:0:0:tcp os" in config
    assert "bind 192.0.2.10:80:0:tcp 203.0.113.150:0:0:tcp" in config
    assert appliance.LocalDirectorKernelMaglevMany(PLAN6).spare_reals()[0] == "2001:db8:1::64"
    path = tmp_path / "many.cfg"
    path.write_text(config)
    check = subprocess.run([sys.executable, "-m", "localdirector", "--check", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    vips = appliance.LocalDirectorKernelMaglevVips()
    assert vips.spare_vips()[-1] == "192.0.2.149" and len(vips.spare_vips()) == 50
    assert "fastpath 192.0.2.120:80:0:tcp kernel" in vips.config()
    path.write_text(vips.config())
    check = subprocess.run([sys.executable, "-m", "localdirector", "--check", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    pairs = roster.contenders_of(["kernel-nat", "localdirector-kernel"],
                                     list(families.FAMILIES))
    twins = roster.with_baseline(pairs, "/old", 2)
    assert [(c.name, c.plan.name, getattr(c, "tree", None)) for c in twins][2:] == [
        ("localdirector-kernel", "ipv4", None), ("localdirector-kernel", "ipv6", None),
        ("localdirector-kernel@base", "ipv4", "/old"),
        ("localdirector-kernel@base", "ipv6", "/old")]
    assert roster.with_baseline(pairs, None, 2) == pairs

    saved = ("*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
             ":LD - [0:0]\n-A PREROUTING -j LD\nCOMMIT\n")
    assert rulecost.used_builtins_only(saved) == (
        "*mangle\n:PREROUTING ACCEPT [0:0]\n:LD - [0:0]\n-A PREROUTING -j LD\nCOMMIT\n")
