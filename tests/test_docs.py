"""The documentation tells the truth: README, man page, examples and `localdirector lab`.

A newcomer copies commands out of README.rst and expects them to work; an operator looks
a command up in the man page and expects it to exist. So: every command README shows is
run here (or, where a test cannot run it — apt-get, systemctl — its equivalent is, and
the test says which); README's shell transcripts are replayed on a real terminal and
must print what README prints; every command the shell knows appears in the man page,
and the man page lists no command the shell does not know; every example passes
`--check` and does in the lab what its comments say.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from conftest import require_netns
from localdirector.appliance import Appliance
from localdirector.cli import build_parser
from localdirector.lab import (DEFAULT_PORTS, DEFAULT_REALS, VIP_NET, Lab,
                               list_namespaces, python_module)
from localdirector.lab import main as lab_command
from localdirector.lab.guide import LabInfo, overview
from localdirector.lab.addresses import (VIP_NET6, client_addresses, client_addresses6,
                                         real6)
from localdirector.model.addr import format_ip
from localdirector.shell import config_file

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"
MAN = ROOT / "man" / "localdirector.8"
EXAMPLES = ROOT / "examples"
SERVICE = EXAMPLES / "localdirector.service"
EXAMPLE_CONFIGS = ["backup-overflow.cfg", "cluster.cfg", "dns.cfg", "dual-stack.cfg",
                   "fig1.cfg", "port-translation.cfg", "probes.cfg", "roundrobin.cfg"]
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-B]|[=>])")
PROMPT = r"localdirector(?:\(config\))?[>#]"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb"}
LOCALDIRECTOR = f"{shlex.quote(sys.executable)} -m localdirector"


def clean(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def as_run(command: str) -> str:
    """A README command line as the tests run it: `localdirector` is this checkout's,
    whatever (if anything) is on PATH."""
    return re.sub(r"(^|\| )localdirector\b", lambda m: m.group(1) + LOCALDIRECTOR, command)


# -- reading README -----------------------------------------------------------------------

def readme_blocks(kind: str) -> list[tuple[str, list[str]]]:
    """`.. code-block:: KIND` blocks as (section title, dedented lines)."""
    lines = README.read_text().splitlines()
    blocks: list[tuple[str, list[str]]] = []
    section = ""
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i + 1] and set(lines[i + 1]) == {"="} and lines[i]:
            section = lines[i]
        if lines[i].strip() == f".. code-block:: {kind}":
            i += 2                              # the directive and its blank line
            body = []
            while i < len(lines) and (not lines[i] or lines[i].startswith("    ")):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1]:
                body.pop()
            blocks.append((section, body))
            continue
        i += 1
    return blocks


def readme_commands() -> list[tuple[str, list[str]]]:
    """Root-shell commands (`# ...` in console blocks) with the output lines README
    shows after each."""
    commands: list[tuple[str, list[str]]] = []
    for _section, body in readme_blocks("console"):
        for line in body:
            if line.startswith("# "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
    return commands


# Every command README shows, and the test that runs it (or its equivalent).
README_RULES = {
    r"apt-get install -y [^&]+ && python3 -m pip install -e \S+":
        "test_readme_setup_is_what_ci_runs (CI runs it)",
    r"python3 -m pytest -q -p no:cacheprovider -n auto --dist loadfile":
        "test_readme_setup_is_what_ci_runs",
    r"localdirector lab": "test_lab_session_shows_fig1_and_cleans_up",
    r"localdirector lab --clean": "test_lab_clean_removes_leftovers",
    r"localdirector lab(?: --config examples/cluster\.cfg)? --cluster \d":
        "test_cluster_lab_session",
    r"localdirector lab --failover": "test_failover_lab_session",
    r"snmpwalk -v2c -c \S+ -m \+LOCALDIRECTOR-MIB -M \S+ \S+ ldRealTable":
        "test_walked_read_and_trapped_with_net_snmp",
    r"localdirector lab --config examples/\S+\.cfg": "test_example_does_what_its_comments_say",
    r"printf '[^']*' \| localdirector lab --config examples/\S+\.cfg":
        "test_readme_scripted_lab",
    r"localdirector --no-dataplane --config my\.cfg": "test_readme_walkthrough",
    r"localdirector --check \S+": "test_readme_walkthrough / test_readme_check_commands",
    r"localdirector --check examples/localdirector/\S+\.cfg":
        "tests/test_ldcompat.py test_check_accepts_notes_or_refuses_every_line",
    r"sysctl -w net\.ipv4\.ip_forward=1": "test_service_unit_headless_with_ssh",
    r"cp examples/localdirector\.service /etc/systemd/system/":
        "test_service_unit_verifies (no systemd init here)",
    r"systemctl daemon-reload": "test_service_unit_verifies (no systemd init here)",
    r"systemctl enable --now localdirector": "test_service_unit_headless_with_ssh",
    r"ssh -p 2222 admin@DIRECTOR(?: '[^']*')?": "test_service_unit_headless_with_ssh",
    r"printf '[^']*' \| ssh -tt -p 2222 admin@DIRECTOR":
        "test_a_script_piped_into_ssh_tt_runs_whole_every_time",
    r"ssh -p 2222 ops@DIRECTOR '[^']*'":
        "test_a_privilege_15_user_runs_privileged_commands_over_exec",
    r"ansible-playbook -i hosts playbook\.yml":
        "test_ansible_cisco_ios_command_config_twice_and_facts",
}


def test_every_readme_command_is_run_by_a_test() -> None:
    commands = [command for command, _ in readme_commands()]
    assert len(commands) >= 15
    unmatched = [c for c in commands if not any(re.fullmatch(r, c) for r in README_RULES)]
    assert not unmatched, f"README commands no test runs: {unmatched}"
    unused = [r for r in README_RULES if not any(re.fullmatch(r, c) for c in commands)]
    assert not unused, f"rules for commands README no longer shows: {unused}"


@pytest.mark.parametrize("document", [README, *sorted((ROOT / "docs").glob("*.rst"))],
                         ids=lambda path: path.name)
def test_documents_are_valid_restructuredtext(document: Path) -> None:
    """README and docs/: a malformed table renders as an error block, not figures."""
    import docutils.core as docutils_core  # a test dependency (setup.cfg [test])
    errors: list[str] = []

    class Collect:
        def write(self, text: str) -> None:
            errors.append(text)

    docutils_core.publish_string(document.read_text(), writer_name="null", settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": Collect()})
    assert not "".join(errors)


def test_readme_setup_is_what_ci_runs() -> None:
    """The set-up lines cannot run inside a test; CI runs their equivalent on a fresh
    machine, so README must not ask for less (or other) than .ci/run installs."""
    ci = (ROOT / ".ci" / "run").read_text()
    ci_packages = set(re.search(r"apt-get install[^\n]*\\\n(.*?)>/dev/null", ci, re.S)
                      .group(1).replace("\\", " ").split())
    setups = [c for c, _ in readme_commands() if c.startswith("apt-get")]
    assert len(setups) == 2
    for setup in setups:
        packages = set(setup.split("&&")[0].split()[3:])
        assert packages <= ci_packages, packages - ci_packages
    assert "python3 -m pip install -q -e '.[test]'" in ci
    assert setups[1].endswith("python3 -m pip install -e '.[test]'")
    test = "python3 -m pytest -q -p no:cacheprovider -n auto --dist loadfile"
    assert f"\n{test}\n" in ci
    assert (test, []) in readme_commands()


def walkthrough() -> list[tuple[str, str, list[str]]]:
    """README's configuration walkthrough as (prompt, typed line, output lines)."""
    steps: list[tuple[str, str, list[str]]] = []
    for section, body in readme_blocks("text"):
        if section != "Configuration walkthrough":
            continue
        for line in body:
            match = re.match(rf"^({PROMPT})(.*)$", line)
            if match:
                steps.append((match.group(1), match.group(2), []))
            else:
                steps[-1][2].append(line)
    return steps


def test_readme_walkthrough(tmp_path: Path) -> None:
    """Typed on a real terminal, README's transcript prints exactly what README shows;
    the file it saves passes README's `--check` with README's answer."""
    commands = dict(readme_commands())
    start = next(c for c in commands if c.startswith("localdirector --no-dataplane"))
    argv = shlex.split(as_run(start))
    child = pexpect.spawn(argv[0], argv[1:], cwd=tmp_path, env=ENV, encoding="utf-8",
                          timeout=15, dimensions=(60, 250))
    steps = walkthrough()
    assert len(steps) > 20 and steps[-1][1] == "exit"
    child.expect(PROMPT)
    for prompt, line, shown in steps:
        assert child.after == prompt, f"README shows {prompt!r} before {line!r}"
        child.sendline(line)
        if line == "exit":
            child.expect(pexpect.EOF)
            break
        child.expect(PROMPT)
        printed = clean(child.before).rpartition(line + "\n")[2]
        assert printed.splitlines() == shown, f"after {line!r}"
    child.close()
    assert child.exitstatus == 0
    check = next(c for c in commands if c == "localdirector --check my.cfg")
    result = subprocess.run(as_run(check), shell=True, cwd=tmp_path, capture_output=True,
                            text=True, env=ENV)
    assert result.returncode == 0
    assert result.stdout.splitlines() == commands[check]


def test_readme_check_commands(tmp_path: Path) -> None:
    """`--check PATH` on the production path: the same command on a copy of FIG. 1 at
    that path's name, and on a broken copy (line-numbered error, status 1)."""
    checks = [c for c, _ in readme_commands() if c.startswith("localdirector --check /")]
    assert checks == ["localdirector --check /etc/localdirector/startup-config"]
    target = tmp_path / "etc" / "localdirector" / "startup-config"
    target.parent.mkdir(parents=True)
    shutil.copyfile(EXAMPLES / "fig1.cfg", target)
    command = as_run(checks[0]).replace("/etc/localdirector", str(target.parent))
    good = subprocess.run(command, shell=True, capture_output=True, text=True, env=ENV)
    assert (good.returncode, good.stdout) == (0, f"{target}: OK\n")
    target.write_text(target.read_text() + "assign 192.0.2.10:80 198.19.0.0 255.255.0.0\n")
    bad = subprocess.run(command, shell=True, capture_output=True, text=True, env=ENV)
    lines = len(target.read_text().splitlines())
    assert bad.returncode == 1
    assert f"line {lines}: % virtual 192.0.2.10:80:0:tcp has Bind ID 0" in bad.stdout
    assert bad.stdout.endswith(f"{target}: 1 bad line\n")


def test_readme_scale_out_router_is_what_the_cluster_lab_runs() -> None:
    """Issue 23 item 5: README's BIRD 2 sample has the lab router's kernel protocol
    (`merge paths on`) and BGP channel, and the router settings it names are the lab's."""
    from localdirector.lab import cluster
    sample = next("\n".join(body) for _section, body in readme_blocks("text")
                  if "merge paths on;" in "\n".join(body))
    conf = cluster.BIRD_CONF.replace("{{", "{").replace("}}", "}")
    kernel = conf.split("protocol kernel {")[1].split("\n}")[0]
    wanted = [line.split("#")[0].strip() for line in kernel.splitlines()]
    wanted.append("ipv4 { import all; export none; };")
    assert all(line in sample for line in wanted if line), sample
    source = Path(cluster.__file__).read_text()
    readme = README.read_text()
    for setting in ("net.ipv4.fib_multipath_hash_policy=1", "rp_filter=0"):
        assert setting in source and setting in readme


# -- examples -------------------------------------------------------------------------------

def test_examples_are_the_documented_ones() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.cfg")) == EXAMPLE_CONFIGS
    readme = README.read_text()
    for name in EXAMPLE_CONFIGS:
        if name != "fig1.cfg":
            assert f"localdirector lab --config examples/{name}" in readme


@pytest.mark.parametrize("name", EXAMPLE_CONFIGS)
def test_example_passes_check(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "localdirector", "--check",
                             str(EXAMPLES / name)], capture_output=True, text=True, env=ENV)
    assert (result.returncode, result.stdout) == (0, f"{EXAMPLES / name}: OK\n")


@pytest.mark.parametrize("name", EXAMPLE_CONFIGS)
def test_example_fits_the_lab(name: str) -> None:
    """`localdirector lab --config` works with every example: VIPs the lab's clients
    route to the director, reals and ports the lab serves."""
    appliance = Appliance(EXAMPLES / name)
    lines = config_file.read(appliance.config_path) or []
    assert config_file.replay(appliance, appliance.director, lines, print) == 0
    director = appliance.director
    assert director.virtuals and director.reals
    for v in director.iter_virtuals():
        assert ipaddress.ip_address(format_ip(v.addr)) in (VIP_NET, VIP_NET6)[v.addr >> 128]
        assert v.links is not None, f"{v.sid} has no reals"
    for r in director.iter_reals():
        assert format_ip(r.addr) in (*DEFAULT_REALS, *map(real6, DEFAULT_REALS))
        assert r.port in (0, *DEFAULT_PORTS)


@pytest.mark.parametrize("name", EXAMPLE_CONFIGS)
def test_the_lab_banner_points_at_show_probe_where_probes_are(name: str) -> None:
    """Issue 23 item 5: the probes lab's banner listed FIG. 1's hints and not `show
    probe`, the one command the example is about."""
    banner = lab_banner(name)
    assert ("  show probe " in banner) == ("show probe" in try_it(name)), banner


def lab_banner(name: str) -> str:
    """What `localdirector lab --config examples/NAME` prints about the lab (dual-stack)."""
    appliance = Appliance(EXAMPLES / name)
    appliance.boot(print)
    clients = {group: list(addrs) for group, addrs in client_addresses().items()}
    clients6 = {group: list(addrs) for group, addrs in client_addresses6().items()}
    info = LabInfo("ldlab0000", "ldlab0000-cli", "ldlab0000-dir",
                   {real: f"ldlab0000-{i}" for i, real in enumerate(DEFAULT_REALS)},
                   list(DEFAULT_PORTS), clients, {g: a[0] for g, a in clients.items()},
                   f"examples/{name}", clients6=clients6,
                   director_side6={g: a[0] for g, a in clients6.items()},
                   reals6={real: real6(real) for real in DEFAULT_REALS})
    return "\n".join(overview(info, appliance.director))


def test_the_dual_stack_banner_shows_both_families() -> None:
    """Issue 26: who goes where for the IPv6 clients too (their groups' /64 to the IPv6
    virtual's instances), the IPv4 rows as before, and how to send IPv6 requests;
    `lab curl -6` is offered only where an IPv6 virtual is configured."""
    banner = lab_banner("dual-stack.cfg")
    assert re.search(r"^preferred 198\.51\.100\.2-9\s+192\.0\.2\.10:80\s+192\.0\.2\.10:80:1:tcp\s+"
                     r"203\.0\.113\.14:0:0:tcp 203\.0\.113\.11:8001:0:tcp", banner, re.M), banner
    for group, bind, reals in (
            ("preferred", 1, r"\[2001:db8:1::14\]:0:0:tcp \[2001:db8:1::11\]:8001:0:tcp"),
            ("unwelcome", 2, r"\[2001:db8:1::15\]:0:0:tcp"),
            ("general", 0, r"\[2001:db8:1::12\]:0:0:tcp \[2001:db8:1::13\]:0:0:tcp")):
        prefix = {"preferred": "c", "unwelcome": "d", "general": "e"}[group]
        assert re.search(rf"^{group} 2001:db8:{prefix}::2-9\s+\[2001:db8::10\]:80\s+"
                         rf"\[2001:db8::10\]:80:{bind}:tcp\s+{reals}", banner, re.M), banner
    assert not re.search(r"^\S+ 198\S+\s+\[2001", banner, re.M)  # no IPv4 client to IPv6
    assert "  lab curl -6 preferred 4 " in banner
    assert "curl --noproxy '*' --interface 2001:db8:c::2 http://[2001:db8::10]:80/" in banner
    assert "203.0.113.11-15 and 2001:db8:1::11-15, each answers" in banner
    assert "lab curl -6" not in lab_banner("fig1.cfg")


def test_probe_example_comments_say_the_configured_intervals() -> None:
    """Issue 23 item 5: examples/probes.cfg said "every 5 s" above `interval 2`."""
    lines = (EXAMPLES / "probes.cfg").read_text().splitlines()
    said = {float(n) for line in lines if line.startswith("!")
            for n in re.findall(r"every (\d+(?:\.\d+)?) s\b", line)}
    configured = {float(m) for line in lines if line.startswith("probeconfig ")
                  for m in re.findall(r"\binterval (\S+)", line)}
    assert said and said <= configured, (said, configured)


def try_it(name: str) -> list[str]:
    """The shell commands an example's `Try it:` comment tells the reader to type."""
    commands = []
    for line in (EXAMPLES / name).read_text().splitlines():
        match = re.match(
            r"^!\s+(?:Try it:\s+)?(lab (?:curl|dig) [^\s].*?|show \w+)(?:\s{2,}.*)?$", line)
        if match:
            commands.append(match.group(1).strip())
    return commands


# -- the man page ---------------------------------------------------------------------------

def man_text() -> str:
    result = subprocess.run(["groff", "-ww", "-man", "-Tascii", "-P-cbou", str(MAN)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


def test_man_page_renders_without_warnings() -> None:
    for argv in (["groff", "-ww", "-man", "-Tutf8", str(MAN)],
                 ["groff", "-ww", "-man", "-Tascii", str(MAN)]):
        result = subprocess.run(argv, capture_output=True, text=True)
        assert (result.returncode, result.stderr) == (0, "")
    shown = subprocess.run(["man", "-l", str(MAN)], capture_output=True, text=True,
                           env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"})
    assert shown.returncode == 0 and "localdirector lab" in shown.stdout


# Run with a lab described in the environment, so the lab-only commands are registered
# too (in a child process: registering them here would add them to every later test).
_REGISTRY_DUMP = r"""
import ipaddress
import json
import os
from localdirector.shell.grammar import Choice, Keyword, Opt, Repeat
from localdirector import cli
from localdirector.commands import REGISTRY
from localdirector.shell.registry import Mode

def leading(syntax):
    paths = [[]]
    for position, element in enumerate(syntax):
        if isinstance(element, Keyword):
            paths = [p + [element.word] for p in paths]
        elif position == 0 and isinstance(element, Choice):   # `end | exit`, `is | os`
            paths = [p + [a[0].word] for p in paths for a in element.alternatives]
        else:
            break
    return [" ".join(p) for p in paths]

def words(element, out):
    if isinstance(element, Keyword):
        out.add(element.word)
    elif isinstance(element, Opt):
        for e in element.elements:
            words(e, out)
    elif isinstance(element, Choice):
        for alternative in element.alternatives:
            for e in alternative:
                words(e, out)
    elif isinstance(element, Repeat):
        words(element.token, out)

if os.environ.get("LOCALDIRECTOR_LAB"):   # as cli.main does
    cli._register_lab_commands()
paths, keywords = set(), set()
for command in REGISTRY.commands:
    for element in command.syntax:
        words(element, keywords)
    if not command.negated:
        prefix = "| " if command.modes == (Mode.FILTER,) else ""
        paths.update(prefix + p for p in leading(command.syntax))
print(json.dumps({"paths": sorted(paths), "keywords": sorted(keywords)}))
"""


FAKE_LAB = json.dumps({
    "name": "ldlab0000", "client_ns": "ldlab0000-cli", "director_ns": "ldlab0000-dir",
    "real_ns": {}, "ports": [80], "config": "x", "director_side": {},
    "clients": {g: ["198.51.100.2"] for g in ("preferred", "unwelcome", "general")}})


def registered(lab: str | None = FAKE_LAB) -> dict[str, list[str]]:
    env = {k: v for k, v in ENV.items() if k != "LOCALDIRECTOR_LAB"}
    if lab is not None:
        env["LOCALDIRECTOR_LAB"] = lab
    result = subprocess.run([sys.executable, "-c", _REGISTRY_DUMP], capture_output=True,
                            text=True, check=True, env=env)
    return json.loads(result.stdout)


@pytest.mark.parametrize("lab", [None, "", "{not json", '{"name": "x"}'])
def test_lab_commands_exist_only_in_a_lab(lab: str | None) -> None:
    """A production appliance (no lab described, or a garbled description) has no `lab`
    keyword and no `show lab`."""
    paths = registered(lab)["paths"]
    assert "show conns" in paths
    assert not [p for p in paths if p.startswith("lab") or p == "show lab"]


def test_man_page_documents_every_command() -> None:
    text = " ".join(man_text().split())
    words = set(re.findall(r"[\w-]+|\|", text))
    found = registered()
    assert {"lab curl", "show lab", "show conns", "| include"} <= set(found["paths"])
    missing = [path for path in found["paths"] if path not in text]
    assert not missing, f"commands missing from the man page: {missing}"
    unknown = [word for word in found["keywords"] if word not in words]
    assert not unknown, f"keywords missing from the man page: {unknown}"


def man_tags(sections: tuple[str, ...]) -> list[str]:
    """The `.TP` tags of some sections of the roff source, as plain text."""
    tags = []
    section = ""
    source = MAN.read_text().splitlines()
    for line, following in zip(source, source[1:]):
        if line.startswith(".SH "):
            section = line[4:].strip('"')
        elif line == ".TP" and section in sections:
            macro, _, rest = following.partition(" ")
            rest = re.sub(r"\\f[BIRP]", "", rest).replace("\\-", "-").replace("\\&", "")
            tokens = shlex.split(rest)
            tags.append(" ".join(tokens) if macro == ".B" else "".join(tokens))
    return tags


def test_man_page_documents_no_command_that_does_not_exist() -> None:
    """Every entry of the command sections names a command the shell knows."""
    paths = set(registered()["paths"])
    tags = man_tags(("CONFIGURATION COMMANDS", "EXEC COMMANDS", "LAB COMMANDS"))
    assert len(tags) > 40
    unknown = []
    for tag in tags:
        words = []
        for word in tag.split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        if " ".join(words) not in paths:
            unknown.append(tag)
    assert not unknown, f"the man page documents commands that do not exist: {unknown}"


def test_man_page_documents_every_option() -> None:
    text = man_text()
    parsers = [build_parser(), lab_command.build_parser()]
    options = {o for p in parsers for a in p._actions for o in a.option_strings
               if o.startswith("--") and o != "--help"}
    assert {"--config", "--check", "--ssh", "--clean"} <= options
    assert not [o for o in options if o not in text]
    assert not set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text)) - options - {"--help"}


# -- the systemd unit -----------------------------------------------------------------------

def unit_exec_start() -> list[str]:
    line = next(l for l in SERVICE.read_text().splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_service_unit_verifies(tmp_path: Path) -> None:
    """What `cp` + `systemctl daemon-reload` would load: systemd's own checker accepts
    the unit (with ExecStart pointing at wherever this checkout's program is)."""
    argv = unit_exec_start()
    assert argv[0] == "/usr/local/bin/localdirector"
    build_parser().parse_args(argv[1:])
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: apt-get install systemd"
    program = tmp_path / "localdirector"
    program.write_text(f"#!/bin/sh\nexec {LOCALDIRECTOR} \"$@\"\n")
    program.chmod(0o755)
    unit = tmp_path / "localdirector.service"
    unit.write_text(SERVICE.read_text().replace(argv[0], str(program)))
    manpath = tmp_path / "man" / "man8"
    manpath.mkdir(parents=True)
    shutil.copyfile(MAN, manpath / "localdirector.8")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, env={**os.environ, "MANPATH": str(tmp_path / "man")})
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# -- in network namespaces ------------------------------------------------------------------

def lab_namespaces(name: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"{name}-")]


def answers(output: str) -> list[str]:
    """The `Answered by` column of `lab curl` output (`lab curl -6`'s too)."""
    return re.findall(r"^\S+\s+(?:192\.0\.2\.\d+|\[2001:db8::[0-9a-f]+\]):\d+\s+"
                      r"(real-\S+|no answer:.*)$", output, re.M)


def dug(output: str) -> list[str]:
    """The `Answered by` column of `lab dig` output."""
    return re.findall(r"^\S+\s+192\.0\.2\.\d+:\d+\s+\S+/\S+\s+\d+\s+(real-\S+)$", output,
                      re.M)


def real_conns(output: str) -> dict[str, int]:
    """`show real` as {real id: current connections}."""
    return {m[0]: int(m[1]) for m in re.findall(r"^(203\.\S+)\s+\S+\s+(\d+)", output, re.M)}


class LabSession:
    """`localdirector lab` on a pseudo-terminal, as a person runs it."""

    def __init__(self, *args: str) -> None:
        self.child = pexpect.spawn(sys.executable, ["-m", "localdirector", "lab", *args],
                                   cwd=ROOT, env=ENV, encoding="utf-8", timeout=20,
                                   dimensions=(60, 250))
        self.child.expect(PROMPT)
        self.banner = clean(self.child.before)
        self.name = re.search(r"ok, lab (ldlab[0-9a-f]{4})", self.banner).group(1)

    def run(self, line: str) -> str:
        """What `line` printed. A log message (a BGP session, a real FAILED) comes on a
        line of its own with the prompt printed again after it, so read prompts until
        the line's own echo has gone by."""
        self.child.sendline(line)
        echo = re.compile("^.*?" + re.escape(line) + "\n", re.M)
        text = ""
        while (found := echo.search(text)) is None:
            self.child.expect(PROMPT)
            text += clean(self.child.before) + "\n"
        return text[found.end():-1]

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGTERM)
            self.child.expect(pexpect.EOF)
        self.child.close()


@pytest.fixture
def lab_session() -> Iterator[LabSession]:
    require_netns()
    session = LabSession()
    try:
        yield session
    finally:
        session.close()


@pytest.mark.netns
def test_lab_session_shows_fig1_and_cleans_up(lab_session: LabSession) -> None:
    session = lab_session
    banner = session.banner
    for step in range(1, 5):
        assert f"[{step}/4] " in banner
    assert ("Reading examples/fig1.cfg and examples/dns.cfg ... 6 virtual instances, "
            "10 reals, 4 assign entries") in banner
    assert re.search(r"preferred 198\.51\.100\.2-9\s+192\.0\.2\.10:80\s+192\.0\.2\.10:80:1:tcp\s+"
                     r"203\.0\.113\.14:0:0:tcp 203\.0\.113\.11:8001:0:tcp", banner)
    assert f"ip netns exec {session.name}-cli curl" in banner
    assert len(lab_namespaces(session.name)) == 7

    preferred = answers(session.run("lab curl preferred 4"))
    assert sorted(set(preferred)) == ["real-203.0.113.11:8001", "real-203.0.113.14:80"]
    assert len(preferred) == 4
    assert answers(session.run("lab curl unwelcome 2")) == ["real-203.0.113.15:80"] * 2
    assert set(answers(session.run("lab curl general 2"))) <= {
        "real-203.0.113.12:80", "real-203.0.113.13:80"}
    # FIG. 1 for datagrams: the same pools by Bind ID, over udp 53 (dnsmasq on the reals)
    preferred = dug(session.run("lab dig preferred 4"))
    assert sorted(set(preferred)) == ["real-203.0.113.11:53", "real-203.0.113.14:53"]
    assert len(preferred) == 4
    assert dug(session.run("lab dig unwelcome 2")) == ["real-203.0.113.15:53"] * 2
    big = session.run("lab dig general big.lab")
    assert re.search(r"big\.lab/TXT\s+3831\s+real-203\.0\.113\.1[23]:53$", big, re.M), big

    session.child.send("\x03")              # Ctrl-C belongs to the shell: the lab stays
    session.child.expect(PROMPT)
    assert "Virtual" in session.run("show virtual")
    session.run("terminal length 0")
    held = session.run("lab curl general 30 hold 30")
    assert held.count("open, held for 30 s") == 30
    session.run("terminal length 24")
    session.child.sendline("show conns")     # 30+ rows: the pager stops at --More--
    session.child.expect_exact("--More--")
    session.child.send("q")
    session.child.expect(PROMPT)
    session.run("terminal length 0")
    assert "= 30" in session.run("show conns | count ESTABLISHED")
    conns = real_conns(session.run("show real"))
    assert conns["203.0.113.12:0:0:tcp"] + conns["203.0.113.13:0:0:tcp"] >= 30
    assert "Who goes where" in session.run("show lab")

    session.child.sendline("exit")
    session.child.expect(pexpect.EOF)
    session.child.close()
    assert session.child.exitstatus == 0
    assert f"Lab removed: 7 namespaces deleted ({session.name}-*)." in clean(
        session.child.before)
    assert lab_namespaces(session.name) == []
    assert not (Path("/run/localdirector-lab") / session.name).exists()


@pytest.mark.netns
@pytest.mark.parametrize("ending", ["SIGTERM to lab", "director crashes"])
def test_lab_removes_itself_however_it_ends(lab_session: LabSession, ending: str) -> None:
    name = lab_session.name
    assert len(lab_namespaces(name)) == 7
    if ending == "SIGTERM to lab":
        lab_session.child.kill(signal.SIGTERM)
        expected = 128 + signal.SIGTERM
    else:
        pids = subprocess.run(["ip", "netns", "pids", f"{name}-dir"], capture_output=True,
                              text=True, check=True).stdout.split()
        assert pids
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        expected = 128 + signal.SIGKILL
    lab_session.child.expect(pexpect.EOF)
    lab_session.child.close()
    assert lab_session.child.exitstatus == expected
    assert "Lab removed: 7 namespaces deleted" in clean(lab_session.child.before)
    assert lab_namespaces(name) == []


def test_lab_refuses_clearly_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Without root (or namespaces) the step that failed and why, status 2, no lab."""
    monkeypatch.setattr(lab_command.os, "geteuid", lambda: 1000)
    assert lab_command.main([]) == 2
    out, err = capsys.readouterr()
    assert "[1/4] Checking this machine can run a lab" in out and out.endswith(" failed\n")
    assert err == ("localdirector lab: the lab builds network namespaces, which needs root: "
                   "run it as root (sudo localdirector lab)\n")
    monkeypatch.setattr(lab_command, "EXAMPLE_DIRS", (Path("/nonexistent"),))
    assert lab_command.main([]) == 2
    assert "cannot find fig1.cfg (looked in /nonexistent); name a configuration with " \
        "--config PATH" in capsys.readouterr().err


@pytest.mark.netns
def test_lab_clean_removes_leftovers() -> None:
    """A lab whose owner died (kill -9) leaves namespaces; README's `--clean` removes
    them and nothing else."""
    require_netns()
    stale = f"{lab_command.PREFIX}{os.urandom(2).hex()}-cli"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        command = next(c for c, _ in readme_commands() if c == "localdirector lab --clean")
        result = subprocess.run(as_run(command), shell=True, capture_output=True, text=True,
                                env=ENV)
        assert result.returncode == 0
        assert result.stdout.startswith("Removed ") and stale in result.stdout
        assert stale not in list_namespaces()
    finally:
        if stale in list_namespaces():
            subprocess.run(["ip", "netns", "del", stale], check=False)


def scripted_lab(command: str) -> str:
    """A README-style `printf ... | localdirector lab ...` line; returns its output."""
    result = subprocess.run(as_run(command), shell=True, cwd=ROOT, capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Lab removed: 7 namespaces deleted \(ldlab[0-9a-f]{4}-\*\)\.",
                     result.stdout)
    return result.stdout.split("(write memory saves there).\n", 1)[1]


@pytest.mark.netns
def test_readme_scripted_lab() -> None:
    require_netns()
    command = next(c for c, _ in readme_commands() if c.startswith("printf "))
    assert command.endswith("localdirector lab --config examples/roundrobin.cfg")
    output = scripted_lab(command)
    assert answers(output) == [f"real-203.0.113.{n}:80" for n in (12, 13, 14, 12, 13, 14)]
    assert real_conns(output) == {f"203.0.113.{n}:0:0:tcp": 2 for n in (12, 13, 14)}


def dug_from(*reals: str) -> Callable[[str], bool]:
    return lambda output: dug(output) == [f"real-203.0.113.{r}:53" for r in reals]


def answered(*reals: str) -> Callable[[str], bool]:
    return lambda output: answers(output) == [f"real-203.0.113.{r}" for r in reals]


def answered_by_one_of(*reals: str) -> Callable[[str], bool]:
    pool = {f"real-203.0.113.{r}" for r in reals}
    return lambda output: bool(answers(output)) and set(answers(output)) <= pool


def answered_among(count: int, *names: str) -> Callable[[str], bool]:
    """`count` answers, each by one of the reals `names` (`real-...`)."""
    return lambda output: len(answers(output)) == count and set(answers(output)) <= {*names}


def answered6(count: int, *reals: str) -> Callable[[str], bool]:
    """`count` answers, each by one of the IPv6 reals 2001:db8:1::N (`N:PORT`)."""
    return answered_among(count, *(f"real-[2001:db8:1::{r.replace(':', ']:')}" for r in reals))


def held(count: int) -> Callable[[str], bool]:
    return lambda output: output.count("open, held for") == count


def connections(real: str, count: int) -> Callable[[str], bool]:
    return lambda output: real_conns(output).get(real) == count


def probes_not_down(count: int) -> Callable[[str], bool]:
    """`show probe` lists `count` checks and none is DOWN (the first results, asked for
    at once, may still be on their way)."""
    def check(output: str) -> bool:
        states = [line.split()[4] for line in output.splitlines()
                  if line.startswith("203.0.113.")]
        return len(states) == count and set(states) <= {"UP", "UNKNOWN"}
    return check


# What each of an example's `Try it:` commands must show in the lab, in order.
EXAMPLE_CHECKS = {
    "dns.cfg": [dug_from("12", "13", "12", "13"), dug_from("14", "11"), dug_from("15"),
                probes_not_down(5)],
    "probes.cfg": [answered("12:80", "13:80", "14:80", "12:80", "13:80", "14:80"),
                   probes_not_down(4)],
    "roundrobin.cfg": [answered("12:80", "13:80", "14:80", "12:80", "13:80", "14:80")],
    "port-translation.cfg": [answered("11:8001", "12:8001"), answered("13:8001")],
    "backup-overflow.cfg": [held(2), answered_by_one_of("12:80", "13:80"),
                            connections("203.0.113.14:0:0:tcp", 2)],
    "dual-stack.cfg": [answered6(4, "14:80", "11:8001"), answered6(2, "15:80"),
                       answered6(4, "12:80", "13:80"),
                       answered_among(4, "real-203.0.113.14:80", "real-203.0.113.11:8001")],
}
SEPARATOR = "show history | count"


@pytest.mark.netns
@pytest.mark.parametrize("name", sorted(EXAMPLE_CHECKS))
def test_example_does_what_its_comments_say(name: str) -> None:
    require_netns()
    commands = try_it(name)
    checks = EXAMPLE_CHECKS[name]
    assert len(commands) == len(checks), commands
    script = "".join(f"{command}\n{SEPARATOR}\n" for command in commands)
    output = scripted_lab(f"printf {shlex.quote(script)} | localdirector lab --config "
                          f"examples/{name}")
    printed = re.split(r"^Number of lines which match regexp = \d+\n", output, flags=re.M)
    for command, check, shown in zip(commands, checks, printed):
        assert check(shown), f"{name}: {command!r} printed:\n{shown}"


@pytest.mark.netns
def test_service_unit_headless_with_ssh(lab: Lab, tmp_path: Path) -> None:
    """The unit's ExecStart in the lab's director namespace: no console, data plane up,
    README's ssh commands work (DIRECTOR = the director's address on the clients'
    side), SIGTERM (`systemctl stop`) ends it cleanly and removes its rules."""
    commands = [c for c, _ in readme_commands()]
    sysctl = next(c for c in commands if c.startswith("sysctl "))
    assert lab.run_in(lab.client_ns, shlex.split(sysctl)).returncode == 0
    assert lab.run_in(lab.client_ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout == "1\n"

    config = tmp_path / "startup-config"
    config.write_text((EXAMPLES / "fig1.cfg").read_text() + "password s3cret\n")
    argv = unit_exec_start()
    argv = [sys.executable, "-m", "localdirector",
            *(str(config) if a == "/etc/localdirector/startup-config" else a
              for a in argv[1:])]
    log = (tmp_path / "log").open("wb")
    proc = lab.popen_in(lab.director_ns, argv, stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT)
    director = lab.director_client_side["preferred"]
    try:
        probe = lab.run_in(lab.client_ns, python_module(
            "client", "probe", "--target", f"{director}:2222", "--deadline", "15"))
        assert probe.returncode == 0, probe.stdout + (tmp_path / "log").read_text()
        ssh = [c for c in commands if c.startswith("ssh -p 2222 admin@")]
        assert len(ssh) == 2
        options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no"]
        remote = shlex.split(ssh[1].replace("DIRECTOR", director))
        result = lab.run_in(lab.client_ns, ["sshpass", "-p", "s3cret", remote[0], *options,
                                            *remote[1:]], timeout=30)
        assert result.returncode == 0, result.stderr
        assert "Data plane:      running" in result.stdout
        interactive = shlex.split(ssh[0].replace("DIRECTOR", director))
        child = pexpect.spawn("ip", ["netns", "exec", lab.client_ns, "sshpass", "-p",
                                     "s3cret", interactive[0], *options, *interactive[1:]],
                              encoding="utf-8", timeout=15, dimensions=(40, 160))
        child.expect_exact("localdirector>")
        child.sendline("show users")
        child.expect(r"\* +\d+ +ssh +198\.51\.100\.2")   # `who` knows it is us, over ssh
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        preferred = lab.client_addresses["preferred"][0]
        assert lab.client_get("http://192.0.2.10/", source=preferred).strip() in (
            "real-203.0.113.14:80", "real-203.0.113.11:8001")
        assert (tmp_path / "ssh_host_ed25519_key").exists()
    finally:
        proc.terminate()
        status = proc.wait(15)
        log.close()
    assert status == 0, (tmp_path / "log").read_text()
    rules = lab.run_in(lab.director_ns, ["iptables", "-w", "-t", "raw", "-S"]).stdout
    assert "LOCALDIRECTOR" not in rules
