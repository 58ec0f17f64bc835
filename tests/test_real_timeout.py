"""`timeout REAL SECONDS` (issue 27): LocalDirector's timeout is a real's command, where a
virtual's id stands for its bound reals. A real's own idle timeout overrides its
virtual's for the connections and flows it serves; `timeout VIRTUAL SECONDS` stays the
virtual's, which every bound real without its own uses (docs/design.rst, "Connection
lifecycle and health")."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from localdirector.appliance import Appliance
from localdirector.failover.replication import Replicator
from localdirector.shell import config_file
from localdirector.shell.registry import Mode
from test_engine import CLIENT, VIP, A, B, lab, sid
from test_udp_engine import UA, flow, udp_lab

CONFIG = """\
real 203.0.113.12:80
real 203.0.113.13:80
virtual 192.0.2.10:80
virtual 192.0.2.10:80:1
bind 192.0.2.10:80 203.0.113.12:80 203.0.113.13:80
timeout 203.0.113.12:80 5
timeout 192.0.2.10:80 30
timeout 192.0.2.10:80:1 40
"""


def configured(text: str = CONFIG) -> Appliance:
    appliance = Appliance(Path("/nonexistent"))
    said: list[str] = []
    assert config_file.replay(appliance, appliance.director, text.splitlines(),
                              said.append) == 0, said
    assert said == []
    return appliance


def test_a_reals_id_sets_its_own_a_virtuals_id_the_virtuals() -> None:
    """A virtual's id is not copied into its reals (as `retry VIRTUAL` is): the reals
    without their own use it, so a real bound later uses it too."""
    d = configured().director
    web1, web2 = d.reals[sid("203.0.113.12:80")], d.reals[sid("203.0.113.13:80")]
    assert (web1.timeout, web2.timeout) == (5, 0)
    assert d.virtuals[sid("192.0.2.10:80")].timeout == 30
    assert d.virtuals[sid("192.0.2.10:80:1")].timeout == 40
    d.set_option(web1.sid, "timeout", None)              # `no timeout REAL`
    assert web1.timeout == 0 and d.virtuals[sid("192.0.2.10:80")].timeout == 30
    assert d.changed_options("timeout") == [(sid("192.0.2.10:80"), 30),
                                            (sid("192.0.2.10:80:1"), 40)]


def test_the_running_config_saves_both_forms_and_reloads_them() -> None:
    running = configured().running_config()
    assert [line for line in running if line.startswith("timeout ")] == [
        "timeout 203.0.113.12:80 5", "timeout 192.0.2.10:80 30",
        "timeout 192.0.2.10:80:1 40"]
    again = configured("\n".join(running))
    assert again.running_config() == running
    assert again.director.reals[sid("203.0.113.12:80")].timeout == 5


def test_show_real_gives_the_reals_own_timeout_only_when_set() -> None:
    appliance = configured()
    out: list[str] = []
    session = appliance.open_session("test", write=out.append, interactive=False)
    session.mode = Mode.PRIV
    assert session.execute("show real 203.0.113.12:80 detail")
    assert "timeout 5 s (its own)" in "".join(out).splitlines()[0]
    out.clear()
    assert session.execute("show real 203.0.113.13:80 detail")
    assert "timeout" not in "".join(out).splitlines()[0]


def test_a_reals_own_timeout_ends_its_connections_while_the_others_stay() -> None:
    lab_, v, (ra, rb) = lab((A, B), predictor="roundrobin")
    lab_.d.set_option(ra.sid, "timeout", 5)
    first, second = lab_.open(41000), lab_.open(41001)
    assert {first.real, second.real} == {ra, rb}
    on_a = 41000 if first.real is ra else 41001
    on_b = 41001 if on_a == 41000 else 41000
    lab_.advance(6)
    assert lab_.conn(on_a) is None and lab_.conn(on_b) is not None
    assert lab_.engine.stats.conns_timed_out == 1
    lab_.advance(v.timeout - 5)                        # the virtual's 900 s, for B's
    assert lab_.conn(on_b) is None
    lab_.assert_idle()


def test_setting_or_removing_a_reals_timeout_refiles_the_open_connections() -> None:
    """Set: a connection filed under the virtual's 900 s goes at the real's 5 s.
    Removed: one filed under the real's 900 s goes at the virtual's 10 s."""
    lab_, v, (ra,) = lab((A,))
    conn = lab_.open()
    lab_.advance(10)
    lab_.d.set_option(ra.sid, "timeout", 5)
    lab_.advance(0.5)
    assert lab_.conn() is None
    lab_.d.set_option(v.sid, "timeout", 10)
    lab_.d.set_option(ra.sid, "timeout", 900)
    conn = lab_.open(41000)
    lab_.advance(8)
    assert lab_.conn(41000) is conn
    lab_.d.set_option(ra.sid, "timeout", None)
    lab_.advance(3)
    assert lab_.conn(41000) is None
    lab_.assert_idle()


def test_a_udp_flow_of_a_real_with_its_own_timeout_goes_at_it() -> None:
    lab_ = udp_lab(reals=(UA,))
    lab_.d.set_option(sid(UA), "timeout", 3)
    lab_.send(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=53) / Raw(b"q"))
    assert flow(lab_) is not None
    lab_.advance(2)
    assert flow(lab_) is not None
    lab_.advance(2)
    assert flow(lab_) is None


def test_the_standby_is_refreshed_within_a_reals_own_timeout() -> None:
    """The whole resend comes every third of the shortest idle timeout, a real's own
    included, so the standby's copy of an idle connection of that real lives on."""
    lab_, _, (ra, _rb) = lab((A, B))
    sender = Replicator(lab_.engine, lambda: lab_.d, lambda *_a: True, lambda: 1.0)

    def interval() -> float:
        sender._send_whole(False)
        return sender._next_refresh - lab_.clock()

    assert interval() == 300.0                            # 900 / 3, clamped
    lab_.d.set_option(ra.sid, "timeout", 60)
    assert interval() == 20.0
