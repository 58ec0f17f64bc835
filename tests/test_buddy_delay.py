"""LocalDirector's `buddy` groups and `delay` (issue 27 item 6): crafted SYNs through the
engine with a fake clock, and the commands' running config, `no` forms and show."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine import VIP, A, B, Lab, sid
from test_shell_commands import Shell

from localdirector.dataplane.engine import ACCEPT_MODIFIED
from localdirector.model.buddy import set_buddy
from localdirector.model.director import Director
from localdirector.model.errors import ModelError
from localdirector.model.state import State

OTHER = "198.51.100.8"


def shop() -> tuple[Lab, Director]:
    """VIP:80 and VIP:443, each bound to A and B on its port, sticky on both, leastconns.
    Another client holds a connection on A:80, so our client's first connection goes to
    B:80 while, left alone, its :443 connection would go to A:443 (the first of the
    least loaded)."""
    d = Director()
    for port in (80, 443):
        v = d.add_virtual(sid(f"{VIP}:{port}"))
        v.sticky = 10
        for real in (A, B):
            d.add_real(sid(f"{real}:{port}"))
            d.bind(sid(f"{VIP}:{port}"), sid(f"{real}:{port}"))
    lab = Lab(d)
    assert lab.open(cport=50000, client=OTHER).real_ip == lab.d.reals[sid(f"{A}:80")].addr
    return lab, d


def group(d: Director, name: str = "shop") -> None:
    for port in (80, 443):
        set_buddy(d.virtuals[sid(f"{VIP}:{port}")], name, d.virtuals.values())


def test_a_sticky_client_finds_the_same_real_address_on_its_buddy() -> None:
    lab, d = shop()
    group(d)
    web = lab.open(cport=40000)
    assert web.real is d.reals[sid(f"{B}:80")]
    secure = lab.open(cport=40001, vport=443)
    assert secure.real is d.reals[sid(f"{B}:443")]
    # And it is remembered on :443 too: the next one goes there by its own table.
    assert d.virtuals[sid(f"{VIP}:443")].sticky_table[secure.foreign_ip][0] is secure.real


def test_without_a_buddy_group_the_predictor_decides() -> None:
    lab, d = shop()
    lab.open(cport=40000)
    assert lab.open(cport=40001, vport=443).real is d.reals[sid(f"{A}:443")]


def test_no_buddy_and_removing_a_virtual_leave_the_group() -> None:
    lab, d = shop()
    group(d)
    web, secure = d.virtuals[sid(f"{VIP}:80")], d.virtuals[sid(f"{VIP}:443")]
    assert web.buddies == (secure,) and secure.buddies == (web,)
    set_buddy(web, "", d.virtuals.values())
    assert (web.buddy, web.buddies, secure.buddies) == ("", (), ())
    lab.open(cport=40000)
    assert lab.open(cport=40001, vport=443).real is d.reals[sid(f"{A}:443")]
    group(d)
    d.remove_virtual(sid(f"{VIP}:80"))
    assert secure.buddies == ()


def test_an_unavailable_buddy_address_falls_back_to_balancing() -> None:
    lab, d = shop()
    group(d)
    lab.open(cport=40000)                      # remembered on B:80
    d.set_state(sid(f"{B}:443"), State.OUT_OF_SERVICE)
    assert lab.open(cport=40001, vport=443).real is d.reals[sid(f"{A}:443")]


def test_an_expired_buddy_memory_is_not_followed() -> None:
    lab, d = shop()
    group(d)
    lab.open(cport=40000)
    lab.clock.t += 11 * 60                     # past sticky 10 minutes
    assert lab.open(cport=40001, vport=443).real is d.reals[sid(f"{A}:443")]


def closed(lab: Lab, cport: int) -> None:
    """A connection on `cport` that just closed (FIN both ways), its last ACK pending."""
    conn = lab.open(cport=cport)
    lab.client("FA", cport)
    lab.real(conn, "FA")


def test_delay_is_how_long_a_closed_connection_lingers() -> None:
    d = Director()
    d.add_virtual(sid(f"{VIP}:80"))
    d.add_real(sid(A))
    d.bind(sid(f"{VIP}:80"), sid(A))
    d.set_option(sid(f"{VIP}:80"), "delay", 10)   # a virtual's id: its reals
    assert d.reals[sid(A)].delay == 10
    lab = Lab(d)
    closed(lab, 40000)
    lab.advance(9)
    assert lab.client("A", 40000)[0] == ACCEPT_MODIFIED   # late packets still translated
    lab.advance(0.5)
    assert lab.conn(40000) is not None
    lab.advance(1.0)
    assert lab.conn(40000) is None and lab.engine.stats.conns_closed == 1
    lab.assert_idle()


def test_each_real_lingers_its_own_delay() -> None:
    """A short delay closed later still goes first: the lingering queue is per delay."""
    d = Director()
    d.add_virtual(sid(f"{VIP}:80"))
    for real, delay in ((A, 30), (B, 0)):
        d.add_real(sid(real))
        d.bind(sid(f"{VIP}:80"), sid(real))
        d.set_option(sid(real), "delay", delay)
    d.virtuals[sid(f"{VIP}:80")].predictor = "roundrobin"
    lab = Lab(d)
    closed(lab, 40000)                          # on A: 30 s
    closed(lab, 40001)                          # on B: removed at the next tick
    lab.advance(0.5)
    assert lab.conn(40001) is None and lab.conn(40000) is not None
    lab.advance(30)
    assert lab.conn(40000) is None
    lab.assert_idle()


def test_commands_running_config_no_forms_and_show(tmp_path: Path) -> None:
    sh = Shell(tmp_path)
    assert sh(f"virtual {VIP}:80", f"virtual {VIP}:443", f"real {A}:80", f"real {A}:443",
              f"bind {VIP}:80 {A}:80", f"bind {VIP}:443 {A}:443", f"sticky {VIP}:80 10",
              f"sticky {VIP}:443 10", f"buddy {VIP}:80 shop", f"buddy {VIP}:443 shop",
              f"delay {A}:80 30", f"delay {VIP}:443 0"), sh.take()
    config = sh.config()
    for line in (f"buddy {VIP}:80 shop", f"buddy {VIP}:443 shop", f"delay {A}:80 30",
                 f"delay {A}:443 0"):
        assert line in config
    sh.take()
    assert sh.session.execute("show buddy shop")
    shown = sh.take()
    assert "shop" in shown and f"{VIP}:80" in shown and f"{VIP}:443" in shown
    assert sh.session.execute(f"show real {A}:80 detail")
    assert "closed connections kept 30 s (delay)" in sh.take()
    assert not sh.session.execute(f"no buddy {VIP}:80 cart")
    assert "is not in buddy group cart" in sh.take()
    assert sh(f"no buddy {VIP}:80", f"no delay {A}:80", f"no delay {A}:443"), sh.take()
    config = sh.config()
    assert f"buddy {VIP}:443 shop" in config
    assert not any(line.startswith((f"buddy {VIP}:80", "delay")) for line in config)
    assert not sh.session.execute(f"delay {A}:80 3601")
    assert sh.director.reals[sid(f"{A}:80")].delay == 2


def test_the_kernel_decides_neither_a_buddy_nor_a_delay() -> None:
    """A kernel-decided virtual's SYNs never reach the predictors and its closed
    connections are conntrack's: both orders of the two settings are refused."""
    d = Director()
    v = d.add_virtual(sid(f"{VIP}:80"))
    d.add_real(sid(A))
    d.bind(sid(f"{VIP}:80"), sid(A))
    d.set_option(sid(f"{VIP}:80"), "predictor", "roundrobin")
    set_buddy(v, "shop", d.virtuals.values())
    with pytest.raises(ModelError, match="is in buddy group shop"):
        d.set_fastpath(sid(f"{VIP}:80"), True, kernel=True)
    set_buddy(v, "", d.virtuals.values())
    d.set_option(sid(A), "delay", 9)
    with pytest.raises(ModelError, match="sets delay"):
        d.set_fastpath(sid(f"{VIP}:80"), True, kernel=True)
    d.set_option(sid(A), "delay", None)
    d.set_fastpath(sid(f"{VIP}:80"), True, kernel=True)
    with pytest.raises(ModelError, match="decided in the kernel"):
        set_buddy(v, "shop", d.virtuals.values())
    with pytest.raises(ModelError, match="sets delay"):
        d.set_option(sid(A), "delay", 9)
    assert (v.buddy, d.reals[sid(A)].delay) == ("", 2)
