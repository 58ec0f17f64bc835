"""keepalived's and conntrackd's configuration files, written from the model and the
unit's own facts; the operator never edits them (docs/design.rst, "Failover").

keepalived: one VRRP instance per interface that holds IPv4 failover virtuals, every one
advertised by unicast over the failover link (so the shared segments carry no VRRP at
all) and accepting adverts from the other unit's address alone (`check_unicast_src`),
tracking its own interface (a unit that loses its client or real link goes to
FAULT and the other takes over) but not the failover link (`dont_track_primary`: on a
direct cable the survivor loses carrier when the other unit dies, and must take over,
not go to FAULT), all in one sync group so both sides move together;
`nopreempt` so a returning unit never takes over by itself, as on LocalDirector;
VRRPv3 for hellos below a second; a track file through which this unit can step down
(`failover active` on the other unit). conntrackd: FTFW over UDP on the failover link,
replicating conntrack's TCP and UDP entries (the fast paths' connections and flows), but
none of the units' own addresses (its own sync traffic among them).

IPv6 virtuals ride in the IPv4 instances as `virtual_ipaddress_excluded`: keepalived
wants one family per `virtual_ipaddress` block because the addresses travel in the
adverts, and ours travel over the IPv4 failover link only, never on the segment the
virtual lives on, so the virtual's family has nothing to say to VRRP. keepalived still
adds and removes them with the instance and sends unsolicited neighbour advertisements
for them on taking over, as it sends gratuitous ARP for IPv4's; the failover link, the
peer address, conntrackd's sync and the stream stay IPv4. An interface with IPv6
virtuals only rides in the first instance (`vrrp_instances`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localdirector.model.addr import family_of, format_ip, is_v6, parse_ip
from localdirector.model.failover import FailoverConfig

GROUP = "LOCALDIRECTOR"
FIRST_VRID = 51
PRIORITY = {"primary": 150, "secondary": 100}
CONNTRACKD_PORT = 3780


@dataclass(frozen=True)
class Unit:
    """What the box knows of itself: its end of the pair and its failover link."""

    role: str            # "primary" or "secondary"
    link: str            # failover link interface
    address: str         # this unit's address on it
    directory: Path      # where the helpers' files live while the appliance runs

    @property
    def notify_fifo(self) -> Path:
        return self.directory / "keepalived.fifo"

    @property
    def yield_file(self) -> Path:
        return self.directory / "step-down"

    @property
    def conntrackd_conf(self) -> Path:
        return self.directory / "conntrackd.conf"

    @property
    def keepalived_conf(self) -> Path:
        return self.directory / "keepalived.conf"


def covers(network: tuple[int, int], addr: int) -> bool:
    """`addr` lies in (network address, prefix length), of its own family."""
    net, plen = network
    family = family_of(net)
    return family is family_of(addr) and (addr ^ net) & family.mask(plen) == 0


def instances(config: FailoverConfig, addresses: list[tuple[str, str, int]]
              ) -> list[tuple[str, list[str]]]:
    """(interface, ["ADDR/LEN", ...]) per interface holding failover virtuals, ordered by
    their lowest address so both units number the instances alike (IPv4's first, then
    IPv6's). `addresses`: this box's (interface, address, prefix length), as
    `interface_addresses` lists them; a virtual goes to the interface holding an address
    of its network, in its own family."""
    networks = [(ifname, (parse_ip(addr), plen)) for ifname, addr, plen in addresses]
    by_iface: dict[str, list[tuple[int, str]]] = {}
    for addr, plen in sorted(config.virtuals):
        owner = next((ifname for ifname, net in networks if covers(net, addr)), None)
        if owner is None:
            raise ValueError(f"no interface holds an address of {format_ip(addr)}/{plen}")
        by_iface.setdefault(owner, []).append((addr, f"{format_ip(addr)}/{plen}"))
    ordered = sorted(by_iface.items(), key=lambda item: item[1][0][0])
    return [(ifname, [text for _, text in entries]) for ifname, entries in ordered]


def _v6(vip: str) -> bool:
    return is_v6(parse_ip(vip.partition("/")[0]))


def vrrp_instances(config: FailoverConfig, addresses: list[tuple[str, str, int]]
                   ) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
    """(interface naming it, interfaces it tracks, [(ADDR/LEN, interface)]) per VRRP
    instance: one per interface holding IPv4 virtuals, in `instances`' order. keepalived
    refuses an instance without an address of its adverts' family, so an interface with
    IPv6 virtuals only rides in the first instance, which tracks it too (all instances
    move together in the sync group, so which one carries an address changes nothing);
    a pair with IPv6 virtuals only has no instance to carry them."""
    placed: list[tuple[str, list[str], list[tuple[str, str]]]] = []
    riders = []
    for ifname, vips in instances(config, addresses):
        if all(_v6(vip) for vip in vips):
            riders.append((ifname, vips))
        else:
            placed.append((ifname, [ifname], [(vip, ifname) for vip in vips]))
    if riders and not placed:
        raise ValueError("IPv6 failover virtuals ride in the VRRP instances of the IPv4 "
                         "ones (the failover link is IPv4): add an IPv4 failover virtual")
    for ifname, vips in riders:
        placed[0][1].append(ifname)
        placed[0][2].extend((vip, ifname) for vip in vips)
    return placed


def _family_blocks(vips: list[tuple[str, str]]) -> list[str]:
    """The instance's address blocks: IPv4 in the adverts (`virtual_ipaddress`), IPv6
    beside them (`virtual_ipaddress_excluded`; the module's docstring says why),
    deprecated (`preferred_lft 0`): it still takes every packet sent to it, but the
    kernel picks the unit's own address as the source of the unit's own traffic, as
    IPv4 picks the primary address, so nothing the unit sends names the moving one."""
    lines = []
    for block, v6, extra in (("virtual_ipaddress", False, ""),
                             ("virtual_ipaddress_excluded", True, " preferred_lft 0")):
        listed = [f"        {vip} dev {ifname}{extra}" for vip, ifname in vips
                  if _v6(vip) is v6]
        if listed:
            lines += [f"    {block} {{", *listed, "    }"]
    return lines


def keepalived(config: FailoverConfig, unit: Unit,
               addresses: list[tuple[str, str, int]]) -> str:
    peer = format_ip(config.peer)
    advert = f"{config.poll_ms / 1000:g}"
    lines = [
        "# Written by localdirector from its model; edits are overwritten.",
        "global_defs {",
        f"    router_id ld_{unit.role}",
        "    vrrp_version 3",
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_lower_prio_repeat 1",
        "    vrrp_higher_prio_send_advert true",
        "    enable_script_security",
        "    script_user root",
        f"    notify_fifo {unit.notify_fifo}",
        "}",
        "track_file ld_step_down {",
        f"    file {unit.yield_file}",
        "    weight 0",
        "}",
    ]
    names = []
    for index, (ifname, tracked, vips) in enumerate(vrrp_instances(config, addresses)):
        name = f"LD_{ifname}"
        names.append(name)
        lines += [
            f"vrrp_instance {name} {{",
            "    state BACKUP",
            "    nopreempt",
            f"    interface {unit.link}",
            f"    virtual_router_id {FIRST_VRID + index}",
            f"    priority {PRIORITY[unit.role]}",
            f"    advert_int {advert}",
            "    dont_track_primary",
            f"    unicast_src_ip {unit.address}",
            "    check_unicast_src",
            f"    unicast_peer {{\n        {peer}\n    }}",
            "    track_interface {", *(f"        {iface}" for iface in tracked), "    }",
            "    track_file {\n        ld_step_down\n    }",
            *_family_blocks(vips),
            "}",
        ]
    lines += [f"vrrp_sync_group {GROUP} {{", "    group {",
              *(f"        {name}" for name in names), "    }", "}"]
    return "\n".join(lines) + "\n"


def conntrackd(config: FailoverConfig, unit: Unit) -> str:
    d = unit.directory
    return f"""# Written by localdirector from its model; edits are overwritten.
Sync {{
    Mode FTFW {{
        ResendQueueSize 131072
        PurgeTimeout 5
        ACKWindowSize 300
        DisableExternalCache Off
    }}
    UDP {{
        IPv4_address {unit.address}
        IPv4_Destination_Address {format_ip(config.peer)}
        Port {CONNTRACKD_PORT}
        Interface {unit.link}
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 32768
    HashLimit 131072
    LogFile {d / 'conntrackd.log'}
    Syslog off
    LockFile {d / 'conntrackd.lock'}
    UNIX {{
        Path {d / 'conntrackd.ctl'}
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    NetlinkOverrunResync On
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv6_address ::1
            IPv4_address {unit.address}
            IPv4_address {format_ip(config.peer)}
        }}
    }}
}}
"""
