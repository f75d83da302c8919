"""Several gateway processes behind one port (``LIANFANG_GATEWAY_PROCESSES``).

One gateway process is bound by its interpreter lock as a whole, so a gateway that is to use more than
one CPU runs several. The process started as the gateway (the *supervisor*) reserves the port and
starts ``processes`` copies of ``python -m services.gateway``, each told its *slot* (0, 1, ...). Each
listens on the port with ``SO_REUSEPORT``, and the kernel spreads new connections over them by a hash
of their addresses (one shared listening socket would not: the first process awake accepts every
connection waiting). The supervisor starts a slot again when it dies, and stops them all on SIGTERM
or SIGINT.

What the slots share and what each keeps (``docs/decisions.md``, "Several gateway processes"):

- one idempotency store (``<spool>/idempotency.sqlite``), whose reservations name the slot that made
  them: only that slot completes one, another answers 409 ``in_progress`` (:mod:`.idempotency`);
- a spool each: slot 0 the spool folder itself (where a one-process gateway keeps its outboxes), slot
  ``i`` the folder ``slot-<i>`` in it, each with its own lock, outboxes and audit chain. Slot 0 drains
  the spools of slots the gateway no longer runs (:func:`orphaned_slots`);
- one place for what reads a Kafka consumer group: slot 0 runs the webhook senders and the inbox
  readers; another slot hands ``GET /v1/inbox`` to slot 0 over slot 0's control socket;
- ``/metrics`` answered by any slot with every slot's samples, each labelled ``slot``
  (:func:`merge_metrics`): a slot serves its own on its control socket (``<slot folder>/gateway.sock``).

This module is the pure part (paths, the merge) and the supervisor; :mod:`.app` is one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from services.kernel.errors import UsageError

log = logging.getLogger("lianfang.gateway")

SLOT_PREFIX: Final = "slot-"
CONTROL_SOCKET: Final = "gateway.sock"
METRICS_PATH: Final = "/slot/metrics"
"""A slot's own samples, on its control socket only."""
USAGE_EXIT: Final = 2
"""A slot's exit code for a setting or a trust domain that is wrong: starting it again cannot help."""
RESTART_BACKOFF_S: Final = (1.0, 30.0)
"""The first and the longest wait before a slot that died is started again."""
STABLE_AFTER_S: Final = 60.0
"""A slot that ran this long before it died is started again after the first wait, not a longer one."""
STOP_GRACE_S: Final = 30.0
"""How long the supervisor waits for its slots after SIGTERM before it kills them."""


def slot_dir(spool: Path, slot: int) -> Path:
    """Slot ``slot``'s spool: the spool folder itself for slot 0 (a one-process gateway's), a folder of
    its own in it for any other."""
    return spool if slot == 0 else spool / f"{SLOT_PREFIX}{slot}"


def control_socket(spool: Path, slot: int) -> Path:
    return slot_dir(spool, slot) / CONTROL_SOCKET


def orphaned_slots(spool: Path, processes: int) -> list[int]:
    """The slots from ``processes`` up whose spool folders exist: a gateway that ran more processes
    before left them, and what their outboxes hold is accepted work that slot 0 must send."""
    found = []
    for folder in spool.glob(f"{SLOT_PREFIX}*"):
        number = folder.name.removeprefix(SLOT_PREFIX)
        if folder.is_dir() and number.isdigit() and number == str(int(number)) and int(number) >= processes:
            found.append(int(number))
    return sorted(found)


def merge_metrics(texts: Mapping[int, str]) -> bytes:
    """One exposition of every slot's samples (Prometheus text format, by slot), each sample labelled
    with its slot: ``sum without (slot)`` gives the gateway's whole."""
    families: dict[str, Metric] = {}
    for slot, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "slot": str(slot)}) for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


# -- the supervisor


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to the port with ``SO_REUSEPORT`` and never listening: it holds the port (port 0
    picks one) for the slots, which listen on it themselves, and takes no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"the gateway cannot bind {host}:{port}: {e.strerror}") from e
    return sock


def _backoff(previous: float, ran_s: float) -> float:
    first, longest = RESTART_BACKOFF_S
    if ran_s >= STABLE_AFTER_S or previous <= 0:
        return first
    return min(longest, previous * 2)


async def supervise(processes: int, host: str, port: int) -> None:
    """Run ``processes`` gateway slots on one listening socket until SIGTERM or SIGINT; a slot that
    dies is started again (after 1 s, doubling to 30 s while it keeps dying within a minute). A slot
    that exits for a wrong setting stops the gateway with :class:`UsageError`."""
    sock = reserve(host, port)
    bound = sock.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children: dict[int, asyncio.subprocess.Process] = {}
    failure: list[str] = []

    async def start(slot: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "LIANFANG_GATEWAY_SLOT": str(slot),
            "LIANFANG_GATEWAY_PROCESSES": str(processes),
            "LIANFANG_GATEWAY_SUPERVISOR": str(os.getpid()),
            "LIANFANG_GATEWAY_PORT": str(bound),
        }
        child = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.gateway", env=env)
        children[slot] = child
        return child

    async def keep(slot: int) -> None:
        wait = 0.0
        while not stop.is_set():
            started = time.monotonic()
            child = await start(slot)
            code = await child.wait()
            if stop.is_set():
                return
            ran = time.monotonic() - started
            if code == USAGE_EXIT:
                failure.append(f"gateway process {slot} refused its settings (exit {code}); see its log")
                stop.set()
                return
            wait = _backoff(wait, ran)
            log.error(
                "gateway process %d (pid %d) exited with %d after %.0f s; starting it again in %.0f s",
                slot, child.pid, code, ran, wait,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)  # a backoff, not a wait for a condition

    tasks = [asyncio.create_task(keep(slot)) for slot in range(processes)]
    log.info("gateway on http://%s:%d: %d processes (pid %d supervises)", host, bound, processes, os.getpid())
    try:
        await stop.wait()
    finally:
        for child in _running(children.values()):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), STOP_GRACE_S)
        except TimeoutError:
            for child in _running(children.values()):
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
    if failure:
        raise UsageError(failure[0])


def stop_with(supervisor: int) -> None:
    """Have the kernel send this process SIGTERM when its supervisor (pid ``supervisor``) dies, and send
    it now if it has died already (Linux). A supervisor killed outright would otherwise leave its
    processes serving the port and holding the spools' locks, and a gateway started again could not
    take them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("this gateway process will not stop with its supervisor: prctl failed (errno %d)",
                    ctypes.get_errno())  # fmt: skip
    if os.getppid() != supervisor:  # it died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG: Final = 1


def _running(children: Iterable[asyncio.subprocess.Process]) -> Iterator[asyncio.subprocess.Process]:
    return (child for child in children if child.returncode is None)
