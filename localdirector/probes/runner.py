"""The probe service: one asyncio event loop in one thread (``probes``) runs every check
of the model (docs/design.rst, "Probes").

A new check is probed at once: until its first result the model passes its real over
(model/probes.py), so a real dead at boot gets no client. Its second probe comes at a
random moment of the interval after, and then every `interval` seconds, shortened at
random by up to a tenth, so a thousand reals are not probed in the same millisecond
again and again. At most `CONCURRENCY` probes are open at once; each is bounded by its
probe's `timeout`. The runner reads the model under `Director.lock` only to copy the
list of checks (again when the model's generation moves, or `reload` swapped the model)
and to report one result, so it never holds up the shell or the data plane.
`localdirector.cli` lists it in SERVICES: it always runs, idle while nothing is
configured."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import random
import threading
import time
from typing import TYPE_CHECKING

from localdirector.model.director import Director
from localdirector.model.probes import ProbeCheck

from . import wire

if TYPE_CHECKING:
    from localdirector.appliance import Appliance

CONCURRENCY = 256
IDLE_POLL = 0.5       # seconds between looks at the model while nothing is due sooner
JITTER = 0.1          # an interval is shortened at random by up to this fraction
STOP_TIMEOUT = 5.0


class ProbeRunner:
    def __init__(self, appliance: "Appliance") -> None:
        self._appliance = appliance
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="probes",
                                        daemon=True)
        self._director: Director | None = None
        self._generation = -1
        self._checks: set[ProbeCheck] = set()    # ProbeCheck hashes by identity
        # (when due, tie-breaker, check): a heap, so a round costs what is due, not a
        # walk over every check.
        self._queue: list[tuple[float, int, ProbeCheck]] = []
        self._first: set[ProbeCheck] = set()   # due for their first probe
        self._order = itertools.count()
        self._running: set[ProbeCheck] = set()
        self._tasks: set[asyncio.Task[None]] = set()   # the loop keeps only weak ones
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> "ProbeRunner":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._schedule(), self._loop)
        return self

    def stop(self) -> None:
        """Cancel what runs, end the loop and its thread; nothing is left behind."""
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop).result(STOP_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    async def _schedule(self) -> None:
        self._slots = asyncio.Semaphore(CONCURRENCY)
        while True:
            await asyncio.sleep(self._round(time.monotonic()))

    def _round(self, now: float) -> float:
        """Start every check that is due; returns how long to sleep."""
        director = self._follow(now)
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, check = heapq.heappop(queue)
            if check not in self._checks:
                continue              # removed from the model since it was queued
            spread = 0.0 if check in self._first else 1 - JITTER
            self._first.discard(check)
            self._push(check, now + check.probe.interval * random.uniform(spread, 1))
            if check not in self._running:   # (a probe waiting for a slot is not doubled)
                self._running.add(check)
                task = self._loop.create_task(self._probe(director, check))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        wake = min(queue[0][0], now + IDLE_POLL) if queue else now + IDLE_POLL
        return max(0.0, wake - time.monotonic())

    def _push(self, check: ProbeCheck, due: float) -> None:
        heapq.heappush(self._queue, (due, next(self._order), check))

    def _follow(self, now: float) -> Director:
        """The model's checks, copied when it changed or `reload` replaced it; a new
        check is due at once."""
        director = self._appliance.director
        with director.lock:
            if director is self._director and director.generation == self._generation:
                return director
            self._director, self._generation = director, director.generation
            checks = {c for c in director.checks.values() if c.runnable}
        for check in checks - self._checks:
            self._first.add(check)
            self._push(check, now)
        self._first &= checks
        self._checks = checks
        return director

    async def _probe(self, director: Director, check: ProbeCheck) -> None:
        probe, addr, port = check.probe, check.addr, check.port
        assert self._slots is not None
        try:
            async with self._slots:
                started = time.monotonic()
                try:
                    good, result = await asyncio.wait_for(wire.run(probe, addr, port),
                                                          probe.timeout)
                except TimeoutError:
                    good, result = False, "timeout"
                latency = time.monotonic() - started
            with director.lock:
                director.probe_result(check, good, result, latency, time.time())
        finally:
            self._running.discard(check)


async def _cancel_all() -> None:
    """Every task of the loop but this one: the schedule and the probes in flight."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: probes are configuration (`probeconfig`, `probe`), not arguments."""


def start(appliance: "Appliance", _args: argparse.Namespace) -> ProbeRunner:
    return ProbeRunner(appliance).start()
