"""The flow memory of dispatched virtuals decided in the kernel (docs/design.rst,
"Decided in the kernel", *Flow memory*): the rules that consult, fill and refresh it,
its timeouts, what an update keeps, and, with the real nft in a namespace of the test's
own, that a real taken out of service keeps its remembered flows while one unbound
loses them."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from test_shell_commands import Shell

from localdirector.dataplane.iptables import run_tool
from localdirector.dataplane.kernelrules import desired_kernel
from localdirector.dataplane.kerneltable import KernelTable
from localdirector.dataplane.nftables import (definition, expected_shape, flow_key,
                                             forget_text, update_text)
from localdirector.model.addr import IPV4, IPV6, parse_ip
from localdirector.model.serverid import ServerId

def config(vip: str, reals: tuple[str, ...]) -> list[str]:
    """A dispatched all-ports tcp virtual over `reals` and a udp one over two of them,
    decided in the kernel; `vip` as an id takes it (IPv6 bracketed)."""
    tcp, udp = f"{vip}:0", f"{vip}:53:0:udp"
    return [*(f"real {r}" for r in reals), f"virtual {tcp}", f"predictor {tcp} maglev",
            f"bind {tcp} {' '.join(reals)}", f"dispatched {tcp}",
            *(f"real {r}:0:0:udp" for r in reals[:2]), f"virtual {udp}",
            f"predictor {udp} maglev", f"bind {udp} {reals[0]}:0:0:udp {reals[1]}:0:0:udp",
            f"dispatched {udp}", f"fastpath {tcp} kernel", f"fastpath {udp} kernel"]


VIP, UDP = "192.0.2.30:0", "192.0.2.30:53:0:udp"
R = ("203.0.113.15", "203.0.113.16", "203.0.113.17")
R6 = ("2001:db8:1::15", "2001:db8:1::16", "2001:db8:1::17")
SIDES = {"ip": ("192.0.2.30", R), "ip6": ("[2001:db8::30]", tuple(f"[{r}]" for r in R6))}


def dispatched(tmp_path: Path, *extra: str, side: str = "ip") -> Shell:
    shell = Shell(tmp_path)
    assert shell(*config(*SIDES[side]), *extra), shell.take()
    shell.take()
    return shell


def text_of(shell: Shell) -> str:
    return "\n".join(definition(desired_kernel(shell.director), "t"))


def test_a_remembered_flow_goes_to_its_real_before_the_hash(tmp_path) -> None:
    shell = dispatched(tmp_path, f"timeout {R[1]} 1200")
    text = text_of(shell)
    tcp, udp = flow_key("tcp", IPV4), flow_key("udp", IPV4)
    assert tcp.startswith("jhash ip saddr . tcp sport . ip daddr . tcp dport mod 4294967295 "
                          "seed 0x6c646d31 . jhash ip saddr")
    for proto in ("tcp", "udp"):
        assert (f"  map flows_{proto} {{\n    typeof numgen inc mod 4294967295 . numgen inc "
                "mod 4294967295 : ip daddr\n    flags dynamic,timeout\n    size 16384\n  }"
                in text)
    # Looked up first, refreshed for the longest idle timeout behind the VIP: R16's own
    # 1200 s; 10 s after a FIN or RST.
    assert ("  chain d_192_0_2_30_0 {\n    tcp flags & (fin | rst) != 0 dup to "
            f"{tcp} map @flows_tcp update @flows_tcp {{ {tcp} timeout 10s : 0.0.0.0 }} "
            "drop\n    dup to "
            f"{tcp} map @flows_tcp update @flows_tcp {{ {tcp} timeout 1200s : 0.0.0.0 }} "
            "drop\n    ip saddr vmap") in text
    assert (f"  chain d_192_0_2_30_53_udp {{\n    dup to {udp} map @flows_udp update "
            f"@flows_udp {{ {udp} timeout 60s : 0.0.0.0 }} drop\n    ip saddr vmap") in text
    # Noted by the branch that chose the real, for its own idle timeout.
    assert (f'"c_192_0_2_30_0_0__203_0_113_16_0_0" update @flows_tcp {{ {tcp} timeout '
            "1200s : 203.0.113.16 }\n    dup to 203.0.113.16 drop") in text
    assert f"update @flows_tcp {{ {tcp} timeout 900s : 203.0.113.15 }}" in text
    assert (f"    update @flows_udp {{ {udp} timeout 60s : 203.0.113.15 }}\n"
            "    dup to 203.0.113.15 drop\n") in text


def test_updates_keep_the_memory_until_no_dispatched_vip_needs_it(tmp_path) -> None:
    shell = dispatched(tmp_path)
    d = shell.director
    before = desired_kernel(d)
    assert {"flows_tcp", "flows_udp"} <= expected_shape(before)[1]
    assert shell(f"out-of-service {R[0]}"), shell.take()
    d.reals[ServerId.parse(R[1])].probe_down = True   # a probe failed it
    after = desired_kernel(d)
    hashed = "\n".join(definition(after, "t"))
    assert "__203_0_113_15_0_0 " not in hashed and "__203_0_113_16_0_0 " not in hashed
    assert after.bound == before.bound   # taken out, failed: still bound, flows kept
    assert "delete map" not in update_text(after, before, "t").replace(
        "delete map ip t s_", "")
    assert shell(f"no fastpath {UDP}"), shell.take()
    gone = update_text(desired_kernel(d), before, "t")
    assert "delete map ip t flows_udp\n" in gone and "delete map ip t flows_tcp" not in gone


def test_forgetting_names_the_unbound_reals_elements_only() -> None:
    listing = json.dumps({"nftables": [{"map": {"name": "flows_tcp", "elem": [
        [{"elem": {"val": {"concat": [11, 12]}, "expires": 30}}, "2001:db8:1::11"],
        [{"elem": {"val": {"concat": [21, 22]}, "timeout": 900}}, "2001:db8:1::12"],
        [{"concat": [31, 32]}, "2001:db8:1::11"]]}}]})
    gone = frozenset({parse_ip("2001:db8:1::11")})
    assert forget_text(listing, "t", IPV6, "tcp", gone) == (
        "add element ip6 t flows_tcp { 11 . 12 : 2001:db8:1::11, 31 . 32 : 2001:db8:1::11 }\n"
        "delete element ip6 t flows_tcp { 11 . 12, 31 . 32 }\n")
    assert forget_text(listing, "t", IPV6, "tcp", frozenset()) == ""


@pytest.fixture
def namespace(netns) -> str:
    name = f"ldflow-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.netns
@pytest.mark.parametrize("side", ["ip", "ip6"])
def test_the_kernel_keeps_a_taken_out_reals_flows_and_forgets_an_unbound_ones(
        tmp_path, namespace: str, side: str) -> None:
    """nft takes the rules of both families (an IPv6 5-tuple as a map key it would
    not), verifies them, and forgets an unbound real's flows only."""
    def nft(argv: list[str], stdin: str = "") -> str:
        return run_tool(["ip", "netns", "exec", namespace, "nft", *argv], stdin, line=0)

    vip, reals = SIDES[side]
    bare = [r.strip("[]") for r in reals]
    shell = dispatched(tmp_path, side=side)
    d = shell.director
    table = KernelTable(7, nft)
    table.install(desired_kernel(d))
    assert not table.repair(d)   # the listing verifies a table with memories
    nft(["-f", "-"], f"add element {side} localdirector7 flows_tcp {{ 1 . 1 : {bare[0]}, "
        f"2 . 2 : {bare[1]}, 3 . 3 : {bare[2]} }}\n")

    def remembered() -> set[str]:
        listing = json.loads(nft(["-j", "list", "map", side, "localdirector7", "flows_tcp"]))
        return {real for item in listing["nftables"] if "map" in item
                for _key, real in item["map"].get("elem", [])}

    assert shell(f"out-of-service {reals[0]}"), shell.take()
    assert table.update(desired_kernel(d), d)
    assert remembered() == set(bare)
    assert shell(f"no bind {vip}:0 {reals[1]}"), shell.take()
    assert table.update(desired_kernel(d), d)
    assert remembered() == {bare[0], bare[2]}
    table.remove(d)
