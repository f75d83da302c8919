"""A Lianfang service (or any Python module) in a child process, for tests and benchmarks.

Integration and end-to-end tests run the router, the hub, the gateway and the console as their own
processes, as an operator would; the benchmarks time them from outside. Each such process is started,
watched through its ``/metrics`` and stopped the same way, here, on the allocator the launchers give
the services (jemalloc where the system has it, ``LIANFANG_MALLOC_PRELOAD``): tests and benchmarks see
the memory production does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from services.kernel import allocator

REPO = Path(__file__).resolve().parents[1]
"""The repository's root: the working directory of every worker, so ``python -m services.…`` works."""


class WorkerExitedError(RuntimeError):
    """A worker that should be running has exited; the message holds the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout: float = 2, address: str = "127.0.0.1") -> dict[str, float] | None:
    """Every series of the Prometheus text on ``address:port``'s /metrics, or None while nothing serves
    it."""
    try:
        text = urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine spent busy so far, summed (user, nice, system, irq, softirq,
    steal; not idle nor waiting for I/O): Linux /proc/stat, 0 elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, field: str) -> int | None:
    """One memory field of process ``pid``'s /proc status in bytes (``VmRSS``, ``VmHWM``, ``RssFile``:
    its file-backed resident pages, libraries' code among them); Linux /proc, None elsewhere or once
    the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes(pid: int, *, peak: bool = False) -> int | None:
    """Resident memory of process ``pid`` now (``VmRSS``), or its peak so far (``VmHWM``); Linux /proc,
    None elsewhere."""
    return status_bytes(pid, "VmHWM" if peak else "VmRSS")


_STARTED: list[Worker] = []
"""Workers started and not yet stopped, oldest first: a failing test's report shows their logs' ends."""


def unstopped() -> Iterator[Worker]:
    """Every worker started and not stopped since, whether still running or exited by itself or killed."""
    yield from list(_STARTED)


class Worker:
    """``python -m <module> [args]`` in a child process of its own session, its output in a log file.

    ``env`` is added to this process's environment. ``port`` is where the worker serves /metrics, if
    it does (the caller picks it with :func:`free_port` and passes it in ``env`` under the service's
    own variable). ``what`` names the worker in error messages.
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        log: Path,
        *,
        args: Sequence[str] = (),
        port: int | None = None,
        what: str | None = None,
    ) -> None:
        self.what = what or module
        self.log = log
        self.port = port
        started = {**os.environ, **env}
        started |= allocator.preload_env(env=started)  # as `lianfang run` starts them
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO,
                env=started,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _STARTED.append(self)

    # ------------------------------------------------------------------ the process

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`WorkerExitedError`, with the end of the log, if the worker has exited."""
        if not self.alive():
            raise WorkerExitedError(f"{self.what} exited with code {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the worker's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker so far (Linux /proc; 0 elsewhere)."""
        return cpu_seconds(self.proc.pid)

    def rss_bytes(self, *, peak: bool = False) -> int | None:
        """The worker's resident memory now, or its peak so far (Linux /proc; None elsewhere or once it
        has exited)."""
        return rss_bytes(self.proc.pid, peak=peak)

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL to its process group: no clean shutdown, no final commit."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then :meth:`kill` if it has not exited within ``timeout``; its exit code."""
        with contextlib.suppress(ValueError):
            _STARTED.remove(self)
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    # ------------------------------------------------------------------ its /metrics

    def metrics(self, timeout: float = 2) -> dict[str, float] | None:
        """Every series of its /metrics, or None while it is not serving them."""
        if self.port is None:
            raise ValueError(f"{self.what} was started without a metrics port")
        return scrape(self.port, timeout)

    def metric(self, name: str, **labels: str) -> float | None:
        """The current value of one series (0 before it appears), or None without /metrics."""
        values = self.metrics()
        if values is None:
            return None
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return values.get(f"{name}{{{want}}}" if want else name, 0.0)

    def total(self, name: str) -> float | None:
        """The sum of every labelled series of one counter (0 before any), or None without /metrics."""
        values = self.metrics()
        if values is None:
            return None
        return sum(v for s, v in values.items() if s == name or s.startswith(name + "{"))
