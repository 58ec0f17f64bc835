"""The configuration the active copies to the standby, and the standby's save
(docs/design.rst, "Failover").

What travels is the running-config less the lines that belong to one unit: `failover ip
address` names the other unit, and `failover key` is a secret the stream (authenticated,
not encrypted) must not show. The standby applies it as configuration only: a line no
running-config holds (`do ...`, `end`, `no ...`) is refused, so even a message with the
right MAC cannot run an exec command there. It writes its startup-config only when the
active asks (`write standby`), and answers whether it could."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from localdirector.model.director import Director
from localdirector.shell import config_file, running_config

if TYPE_CHECKING:
    from localdirector.appliance import Appliance

log = logging.getLogger("localdirector.failover")

PER_UNIT = ("failover ip address ", "failover key ")   # never copied
SAVE_WAIT = 5.0     # seconds the active waits for the standby's answer


def _split(lines: list[str]) -> tuple[list[str], list[str]]:
    """(this unit's own lines, the rest)."""
    own = [line for line in lines if line.startswith(PER_UNIT)]
    return own, [line for line in lines if not line.startswith(PER_UNIT)]


class ConfigCopy:
    """`send` writes a message to the other unit (False when it is not connected)."""

    def __init__(self, appliance: "Appliance",
                 send: Callable[[dict[str, Any]], bool]) -> None:
        self.appliance = appliance
        self.send = send
        self._ids = itertools.count(1)
        self._answers: dict[int, str | None] = {}
        self._answered = threading.Condition()

    def lines(self) -> list[str]:
        """What the active sends: its running-config less the per-unit lines."""
        director = self.appliance.director
        with director.lock:
            return _split(running_config.render(director, self.appliance.registry))[1]

    # -- the standby's side ------------------------------------------------------------
    def apply(self, lines: Any) -> None:
        """The active's running-config (`lines` of its message), rebuilt here as `reload`
        does, keeping this unit's own per-unit lines."""
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            log.error("failover: a configuration from the active that is not lines; "
                      "ignored")
            return
        appliance = self.appliance
        with appliance.director.lock:
            own = _split(running_config.render(appliance.director, appliance.registry))[0]
            director = Director(appliance.director.lock)
            failed = config_file.replay(
                appliance, director, own + _split(lines)[1],
                lambda text: log.error("failover: from the active: %s", text),
                saved_only=True)
            appliance.director = director
            for hook in appliance.reload_hooks:
                hook(director)
        log.info("failover: configuration received from the active unit%s",
                 f" ({failed} lines refused or failed)" if failed else "")

    def save(self, message: dict[str, Any]) -> None:
        """The active's `write standby`: save as `write memory` does, and answer."""
        error = self.appliance.write_memory()
        if error is None:
            log.info("failover: startup-config saved, as the active unit asked")
        else:
            log.error("failover: the active unit asked to save: %s", error)
        self.send({"t": "saved", "id": message.get("id"), "error": error})

    # -- the active's side -------------------------------------------------------------
    def saved(self, message: dict[str, Any]) -> None:
        """The standby's answer to `request_save`."""
        ask, error = message.get("id"), message.get("error")
        if not isinstance(ask, int):
            return
        with self._answered:
            self._answers[ask] = error if isinstance(error, str) else None
            self._answered.notify_all()

    def request_save(self) -> str:
        """Ask the standby to save what it runs; one line saying what happened."""
        ask = next(self._ids)
        with self._answered:
            self._answers.clear()
            if not self.send({"t": "save", "id": ask}):
                return "% The standby does not answer; its startup-config is unchanged"
            if not self._answered.wait_for(lambda: ask in self._answers, SAVE_WAIT):
                return "% The standby did not say whether it saved"
            error = self._answers.pop(ask)
        return "[OK] saved on the standby" if error is None else \
            f"% The standby could not save: {error}"
