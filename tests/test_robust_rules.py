"""The kernel-side defences without a kernel: the `synguard` SYN-rate guard rules, the
chains for the director's own ICMP errors and for reassembly, the shed counter, and the
warnings and counters read from /proc (iptables is the fake of test_dataplane_service)."""

from __future__ import annotations

from pathlib import Path

from test_dataplane_service import FakeIptables, director, sid

from localdirector.dataplane.host import read_ip_errors, route_problems
from localdirector.dataplane.iptables import names, raw_rules
from localdirector.dataplane.ruleset import RulesError, desired_rules
from localdirector.dataplane.transactions import RuleManager

Q7 = names(7)   # the chains of the appliance on queue 7, as these tests install


def test_synguard_puts_a_per_source_syn_rate_guard_ahead_of_the_queue_rule() -> None:
    d = director()
    with d.lock:
        d.virtuals[sid("192.0.2.10:80:0")].synguard = 64
        d.virtuals[sid("192.0.2.10:80:1")].synguard = 200  # largest of the instances wins
        d.virtuals[sid("192.0.2.20:0")].synguard = 10
    lines = raw_rules(desired_rules(d), Q7)
    guard = next(i for i, line in enumerate(lines) if "--dport 80 --tcp-flags" in line)
    assert lines[guard].startswith(
        "-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 80 "
        "--tcp-flags FIN,SYN,RST,ACK SYN -m hashlimit --hashlimit-above 200/sec "
        "--hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-name ldsg")
    assert lines[guard].endswith("--hashlimit-htable-max 65536 "
                                 "--hashlimit-htable-expire 10000 -j LOCALDIRECTOR7-SHED")
    queue = lines.index("-A LOCALDIRECTOR7 -d 192.0.2.10/32 -p tcp -m tcp --dport 80 "
                        "-j LOCALDIRECTOR7-QUEUE")
    assert guard < queue
    # A port-0 virtual guards every port; no guard where no synguard is set (443).
    assert any("-d 192.0.2.20/32 -p tcp -m tcp --tcp-flags" in line for line in lines)
    assert not any("--dport 443 --tcp-flags" in line for line in lines)
    # The kernel keeps a table's first settings: a new rate must mean a new table name.
    with d.lock:
        d.virtuals[sid("192.0.2.10:80:1")].synguard = 100
    renamed = next(l for l in raw_rules(desired_rules(d), Q7) if "--dport 80 --tcp-flags" in l)
    assert renamed.split("--hashlimit-name ")[1][:12] != lines[guard].split(
        "--hashlimit-name ")[1][:12]


def test_install_adds_local_icmp_shed_and_defrag_chains_and_remove_takes_all() -> None:
    fake = FakeIptables()
    manager = RuleManager(7, fake)
    manager.install(desired_rules(director()))
    main, defrag = (text.splitlines() for text in fake.restored)
    assert "-I OUTPUT 1 -p icmp -j LOCALDIRECTOR7-LOCAL" in main
    for kind in (3, 11, 12):
        assert (f"-A LOCALDIRECTOR7-LOCAL -p icmp -m icmp --icmp-type {kind} "
                "-j LOCALDIRECTOR7-QUEUE") in main
    assert "-A LOCALDIRECTOR7-SHED -j DROP" in main
    assert defrag[1:3] == [f":{Q7.defrag} - [0:0]", f"-A {Q7.defrag} -m socket -j RETURN"]
    leftovers = FakeIptables("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                             + "".join(f":{c} - [0:0]\n" for c in (
                                 "LOCALDIRECTOR7", "LOCALDIRECTOR7-QUEUE", Q7.local,
                                 Q7.shed, Q7.defrag))
                             + "-A PREROUTING -j LOCALDIRECTOR7\n"
                             "-A OUTPUT -p icmp -j LOCALDIRECTOR7-LOCAL\nCOMMIT\n")
    RuleManager(7, leftovers).remove()
    body = leftovers.restored[0].splitlines()[1:-1]
    assert body[:2] == ["-D PREROUTING -j LOCALDIRECTOR7",
                        "-D OUTPUT -p icmp -j LOCALDIRECTOR7-LOCAL"]
    # Chains that refer to others go first, all in the same transaction.
    assert [line for line in body if line.startswith("-X")] == [
        "-X LOCALDIRECTOR7", f"-X {Q7.local}", "-X LOCALDIRECTOR7-QUEUE", f"-X {Q7.shed}",
        f"-X {Q7.defrag}"]


def test_a_kernel_without_the_socket_match_still_gets_a_data_plane(caplog) -> None:
    class NoSocketMatch(FakeIptables):
        def __call__(self, argv: list[str], stdin: str) -> str:
            if "-m socket" in stdin:
                raise RulesError("iptables-restore: Couldn't load match `socket'")
            return super().__call__(argv, stdin)

    fake = NoSocketMatch()
    RuleManager(7, fake).install(desired_rules(director()))
    assert len(fake.restored) == 1
    assert "fragments will not be reassembled" in caplog.text


def test_queued_and_shed_counters_are_read_from_the_kernel_and_cleared_by_offset() -> None:
    fake = FakeIptables()
    manager = RuleManager(7, fake)
    manager.install(desired_rules(director()))
    queue_rule = "-A LOCALDIRECTOR7-QUEUE -j NFQUEUE --queue-num 7 --queue-bypass"
    fake.saved = (f"*raw\n[999:1] -A LOCALDIRECTOR7-QUEUE -j NOTRACK\n[1000:2] {queue_rule}\n"
                  "[12345:678] -A LOCALDIRECTOR7-SHED -j DROP\nCOMMIT\n")
    assert manager.counters() == {"queued": 1000, "shed": 12345, "flood": 0,
                                  "datagram_flood": 0, "logged": 0, "stray": 0}
    manager.clear_counters()
    fake.saved = f"*raw\n[1010:3] {queue_rule}\n[12400:700] -A LOCALDIRECTOR7-SHED -j DROP\n"
    assert manager.counters() == {"queued": 10, "shed": 55, "flood": 0,
                                  "datagram_flood": 0, "logged": 0, "stray": 0}


def test_route_warning_names_vips_without_any_route(tmp_path: Path) -> None:
    table = tmp_path / "route"
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
    # 203.0.113.0/24 on br0 only (as in the lab's director): no route toward the VIPs.
    table.write_text(header + "br0\t007100CB\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    problems = route_problems({0xC000020A, 0xCB00710C}, table)
    assert len(problems) == 1 and problems[0].startswith("no route toward VIP 192.0.2.10:")
    table.write_text(header + "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert route_problems({0xC000020A}, table) == []  # a default route will do


def test_ip_errors_come_from_the_ip_lines_of_snmp(tmp_path: Path) -> None:
    snmp = tmp_path / "snmp"
    snmp.write_text("Ip: Forwarding DefaultTTL InReceives InHdrErrors ReasmFails\n"
                    "Ip: 1 64 1000 7 2\nIcmp: InMsgs\nIcmp: 3\n")
    assert read_ip_errors(snmp) == {"header errors": 7, "reassembly failures": 2}
    assert read_ip_errors(tmp_path / "absent") == {}
