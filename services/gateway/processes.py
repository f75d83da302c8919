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
from collections.abc import Iterable, Mapping
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
STOP_GRACE_S: Final = 90.0
"""How long the supervisor waits for its slots after SIGTERM before it kills them: longer than a slot's
own shutdown (aiohttp gives requests in flight 60 s), so each finishes as a one-process gateway does."""
MAX_SOCKET_PATH: Final = 107
"""The longest path of a unix socket Linux takes (``sun_path`` is 108 bytes with its terminating NUL)."""


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
    picks one) for the slots, which listen on it themselves, and takes no connection.

    First the port is bound without ``SO_REUSEPORT``, which fails while anything holds it (another
    gateway's reservation or processes included: with ``SO_REUSEPORT`` alone they would share the port,
    and a retry reaching the other gateway's memory of requests would be sealed again) but not for
    connections of an earlier run still in TIME_WAIT. The reservation itself has no ``SO_REUSEADDR``,
    so a server without ``SO_REUSEPORT`` cannot take the port while no slot listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UsageError(f"the gateway cannot bind {host}:{port}: {e.strerror}") from e
        port = probe.getsockname()[1]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"the gateway cannot bind {host}:{port}: {e.strerror}") from e
    return sock


def check_settings(spool: Path, processes: int) -> None:
    """What several processes need of the machine and the settings (:class:`UsageError` otherwise):
    Linux (``SO_REUSEPORT``'s spreading, the parent-death signal) and control sockets' paths short
    enough for ``sun_path``."""
    if sys.platform != "linux":
        raise UsageError("LIANFANG_GATEWAY_PROCESSES above 1 needs Linux")
    longest = control_socket(spool.absolute(), processes - 1)
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        raise UsageError(
            f"the spool folder's path is too long for the processes' control sockets ({longest} is over "
            f"{MAX_SOCKET_PATH} bytes): give LIANFANG_GATEWAY_SPOOL_DIR a shorter one"
        )


def _backoff(previous: float, ran_s: float) -> float:
    first, longest = RESTART_BACKOFF_S
    if ran_s >= STABLE_AFTER_S or previous <= 0:
        return first
    return min(longest, previous * 2)


async def supervise(processes: int, host: str, port: int) -> None:
    """Run ``processes`` gateway slots on one port until SIGTERM or SIGINT; a slot that dies is started
    again (after 1 s, doubling to 30 s while it keeps dying within a minute). A slot that exits for a
    wrong setting stops the gateway with :class:`UsageError`."""
    sock = reserve(host, port)  # check_settings ran when the settings were made
    try:
        await _Supervisor(processes, sock.getsockname()[1]).run(host)
    finally:
        sock.close()


class _Supervisor:
    def __init__(self, processes: int, port: int) -> None:
        self.processes = processes
        self.port = port
        self.stop = asyncio.Event()
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.failure: str | None = None

    async def run(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        tasks = [asyncio.create_task(self.keep(slot)) for slot in range(self.processes)]
        log.info(
            "gateway on http://%s:%d: %d processes (pid %d supervises)",
            host, self.port, self.processes, os.getpid(),
        )  # fmt: skip
        try:
            await self.stop.wait()
        finally:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_GRACE_S)
            except TimeoutError:
                self.signal(signal.SIGKILL)
                await asyncio.gather(*tasks, return_exceptions=True)
        if self.failure is not None:
            raise UsageError(self.failure)

    def signal(self, sig: int) -> None:
        for child in self.children.values():
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(sig)

    async def start(self, slot: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "LIANFANG_GATEWAY_SLOT": str(slot),
            "LIANFANG_GATEWAY_PROCESSES": str(self.processes),
            "LIANFANG_GATEWAY_SUPERVISOR": str(os.getpid()),
            "LIANFANG_GATEWAY_PORT": str(self.port),
        }
        child = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.gateway", env=env)
        self.children[slot] = child
        if self.stop.is_set():  # the stop came while it was being started: the sweep did not see it
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        return child

    async def keep(self, slot: int) -> None:
        wait = 0.0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                child = await self.start(slot)
            except OSError as e:  # no process could be made (out of memory, of pids): try again
                code, pid = -1, 0
                log.error("gateway process %d could not be started: %s", slot, e)
            else:
                code, pid = await child.wait(), child.pid
            if self.stop.is_set():
                return
            ran = time.monotonic() - started
            if code == USAGE_EXIT:
                self.failure = f"gateway process {slot} refused its settings (exit {code}); see its log"
                self.stop.set()
                return
            wait = _backoff(wait, ran)
            log.error(
                "gateway process %d (pid %d) exited with %d after %.0f s; starting it again in %.0f s",
                slot, pid, code, ran, wait,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)  # a backoff, not a wait for a condition


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
