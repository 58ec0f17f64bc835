"""Property: `write terminal` replayed into an empty appliance gives the same
`write terminal` and the same model, for random configurations built (and partly torn
down) by commands; every refused command on the way leaves the running config as it was."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localdirector.appliance import Appliance
from localdirector.model.director import Director
from localdirector.shell import config_file, running_config
from localdirector.model.passwords import hash_password
from localdirector.shell.registry import Mode

HASHES = [hash_password(p) for p in ("alpha", "bravo")]

# Both families: IPv6 ids bracketed, and reals, backups and assigns that would mix the
# families refused (no NAT64), which the property checks too.
vips = st.one_of(
    st.builds("192.0.2.{}:{}:{}".format, st.sampled_from([10, 11]),
              st.sampled_from([0, 80, 443]), st.integers(0, 3)),
    st.builds("[2001:db8::{}]:{}:{}".format, st.sampled_from([10, 11]),
              st.sampled_from([0, 80]), st.integers(0, 2)))
reals = st.one_of(
    st.builds("{}:{}".format,
              st.sampled_from(["203.0.113.11", "203.0.113.12", "203.0.113.13",
                               "203.0.113.14", "web", "db", "web6"]),
              st.sampled_from([0, 8001])),
    st.builds("[{}]:{}".format, st.sampled_from(["2001:db8:1::11", "2001:db8:1::12"]),
              st.sampled_from([0, 8001])),
    st.sampled_from(["2001:db8:1::13"]))
clients = st.builds("{} {}".format,
                    st.sampled_from(["198.51.100.0", "198.51.100.7", "198.18.0.0",
                                     "198.19.255.1"]),
                    st.sampled_from(["255.255.255.0", "255.255.255.255", "255.254.0.0",
                                     "0.0.0.0"]))
assign_clients = st.one_of(clients, st.sampled_from(
    ["2001:db8:c::/48", "2001:db8:c:1::/64", "2001:db8:d::5", "198.51.100.0/24"]))
maybe_no = st.sampled_from(["", "", "no "])
NAMES = ["name 203.0.113.11 web", "name 203.0.113.14 db", "name 2001:db8:1::13 web6"]


def fmt(template: str, *parts: st.SearchStrategy) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda values: template.format(*values))


def commands(vip: st.SearchStrategy[str], real: st.SearchStrategy[str]
             ) -> st.SearchStrategy[str]:
    """Every configuration command, aimed mostly at servers that exist."""
    server = st.one_of(vip, real)
    return st.one_of(
        fmt("{}real {} {}", maybe_no, real, st.sampled_from(["", "is", "os"])),
        fmt("{}virtual {} {}", maybe_no, vip, st.sampled_from(["", "is", "os"])),
        fmt("{}bind {} {}", maybe_no, vip,
            st.lists(real, min_size=1, max_size=3).map(" ".join)),
        fmt("{}assign {} {}", maybe_no, vip, assign_clients),
        fmt("{}{} {} {}", maybe_no, st.sampled_from(["weight", "maxconns", "threshold",
                                                     "reassign", "retry", "timeout"]),
            real, st.integers(1, 20)),
        fmt("{}{} {} {}", maybe_no, st.sampled_from(["timeout", "sticky", "synguard"]),
            vip, st.integers(1, 20)),
        fmt("{}predictor {} {}", maybe_no, vip,
            st.sampled_from(["leastconns", "roundrobin", "weighted", "fastest"])),
        fmt("{}backup {} {}", maybe_no, server, server),
        fmt("{}{} {}", maybe_no, st.sampled_from(["in-service", "os"]), server),
        fmt("{}name {} {}", maybe_no,
            st.sampled_from(["203.0.113.11", "203.0.113.13", "203.0.113.14",
                             "2001:db8:1::13"]),
            st.sampled_from(["web", "db", "web6"])),
        fmt("{}hostname {}", maybe_no, st.sampled_from(["edge-1", "ld2"])),
        fmt("{}{} {}", maybe_no, st.sampled_from(["telnet", "ssh"]), clients),
        fmt("{}{} {} encrypted", maybe_no,
            st.sampled_from(["enable password", "password"]), st.sampled_from(HASHES)),
        fmt("{}failover key {}", maybe_no, st.sampled_from(
            ["none", "correcthorse", "short",
             "hashed CHTaq02iBnFKYFt2PfwXw8KlcOb0eRB4AK1UCG3eECo",
             "hashed CHTaq02iBnFKYFt2PfwXw8KlcOb0eRB4AK1UCG3eECp"])),
    )


@st.composite
def scripts(draw: st.DrawFn) -> list[str]:
    """A few servers created up front, then random commands on (mostly) those servers,
    so binds, assigns, settings and removals really happen rather than being refused."""
    vip_pool = draw(st.lists(vips, min_size=1, max_size=4, unique=True))
    real_pool = draw(st.lists(reals, min_size=1, max_size=4, unique=True))
    setup = NAMES[:draw(st.integers(0, 3))]
    setup += [f"real {r}" for r in real_pool] + [f"virtual {v}" for v in vip_pool]
    pick = lambda pool, other: st.one_of(st.sampled_from(pool), st.sampled_from(pool),
                                         st.sampled_from(pool), other)
    return setup + draw(st.lists(commands(pick(vip_pool, vips), pick(real_pool, reals)),
                                 max_size=40))


def snapshot(director: Director) -> tuple:
    """Every configured field of the model, so a saver that loses information (and would
    still replay to the same text) is caught."""
    virtuals = [(v.sid, v.state, v.predictor, v.timeout, v.sticky, v.synguard, v.backup,
                 [link.real.sid for link in v.iter_links()]) for v in director.iter_virtuals()]
    reals = [(r.sid, r.admin_state, r.weight, r.maxconns, r.threshold, r.reassign, r.retry,
              r.timeout, r.backup) for r in director.iter_reals()]
    assigns = [(o.virtual.sid, o.client_ip, o.prefixlen) for o in director.bindids]
    return virtuals, reals, assigns, dict(director.addr_names), director.settings


def fresh(path: Path):
    appliance = Appliance(path)
    session = appliance.open_session("test", interactive=False)
    session.mode = Mode.CONFIG
    return appliance, session


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scripts())
def test_write_terminal_replays_to_itself(tmp_path, script):
    appliance, session = fresh(tmp_path / "startup-config")
    config = lambda a: running_config.render(a.director, session.registry)
    for line in script:
        before = config(appliance)
        if not session.execute(line):
            assert config(appliance) == before, line
    text = config(appliance)
    replica, _ = fresh(tmp_path / "other")
    errors: list[str] = []
    assert config_file.replay(replica, replica.director, text, errors.append) == 0, errors
    assert config(replica) == text
    assert snapshot(replica.director) == snapshot(appliance.director)
    # Typed again on top of itself (what Ansible's `ios_config` does with lines it does
    # not find), the running config is unchanged: every line is in its canonical form.
    for line in text:
        if not line.startswith("!"):
            assert session.execute(line), line
    assert config(appliance) == text


CANONICAL = [
    "real 203.0.113.31", "real 203.0.113.32:8080 os", "virtual 192.0.2.10:80",
    "virtual 192.0.2.10:80:1", "virtual 192.0.2.10:0:2 os",
    "bind 192.0.2.10:80 203.0.113.31 203.0.113.32:8080", "bind 192.0.2.10:80:1 203.0.113.31",
    "assign 192.0.2.10:80:1 198.51.100.7", "assign 192.0.2.10:80:1 198.18.0.0 255.255.255.0",
    "weight 203.0.113.31 3", "predictor 192.0.2.10:80 roundrobin",
    "backup 192.0.2.10:80:1 192.0.2.10:80",
    "real [2001:db8:1::11]:8001", "virtual [2001:db8::10]:80:1", "virtual [2001:db8::10]",
    "bind [2001:db8::10]:80:1 [2001:db8:1::11]:8001",
    "assign [2001:db8::10]:80:1 2001:db8:c::/48", "assign [2001:db8::10]:80:1 2001:db8:d::5"]


def test_lines_typed_in_the_canonical_form_are_shown_as_typed(tmp_path):
    """Issue 24 item 3: the running config shows a line the way the man page's canonical
    form types it (defaults omitted), and the long forms mean the same and are shown
    short."""
    appliance, session = fresh(tmp_path / "startup-config")
    assert all(session.execute(line) for line in CANONICAL)
    shown = running_config.render(appliance.director, session.registry)
    assert sorted(line for line in shown if not line.startswith(("!", "hostname"))) == \
        sorted(CANONICAL)
    long_forms, session = fresh(tmp_path / "long")
    assert all(session.execute(line) for line in [
        "real 203.0.113.31:0:0:tcp is", "real 203.0.113.32:8080:0:tcp os",
        "virtual 192.0.2.10:80:0:tcp is", "virtual 192.0.2.10:80:1:tcp",
        "virtual 192.0.2.10:0:2:tcp os",
        "bind 192.0.2.10:80:0:tcp 203.0.113.31:0 203.0.113.32:8080:0:tcp",
        "bind 192.0.2.10:80:1 203.0.113.31:0:0", "assign 192.0.2.10:80:1 198.51.100.7 "
        "255.255.255.255", "assign 192.0.2.10:80:1:tcp 198.18.0.0 255.255.255.0",
        "weight 203.0.113.31:0:0:tcp 3", "predictor 192.0.2.10:80:0 roundrobin",
        "backup 192.0.2.10:80:1:tcp 192.0.2.10:80:0:tcp",
        "real [2001:db8:1:0::11]:8001:0:tcp", "virtual [2001:db8::10]:80:1:tcp",
        "virtual 2001:db8::10", "bind [2001:db8::10]:80:1:tcp [2001:db8:1::11]:8001:0",
        "assign [2001:db8::10]:80:1 2001:db8:c:0::/48",
        "assign [2001:db8::10]:80:1 2001:db8:d::5/128"])
    assert running_config.render(long_forms.director, session.registry) == shown
