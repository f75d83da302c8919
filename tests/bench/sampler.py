"""A wall-clock stack sampler for the benchmarks: where every thread of a process spends its time.

cProfile sees one thread; the SDK's publishers and the gateway's request threads spend most of their
time waiting (an fsync, the pseudonymizer's answer, a lock), which a CPU profile does not show either.
:class:`Sampler` looks at the stacks of the threads that matter every ``interval_s`` and counts, per
function, the samples in which it is on top (``own``) and anywhere on the stack (``inclusive``). A thread
matters when a frame of its stack is in one of the ``focus`` files (the request path), or, with ``main``,
it is the main thread (an event loop's own work and its idle ``select``); background threads (the outbox's drainer, the
audit shipper) are left out.

``python -m tests.bench.sampler OUT FOCUS MODULE [ARGS...]`` (``FOCUS``: comma-separated) runs ``MODULE`` as ``python -m`` would, sampled, and writes the top functions to ``OUT`` (JSON) every second and
when it exits.
"""

from __future__ import annotations

import json
import runpy
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any


def _name(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    short = path.split("/site-packages/")[-1] if "/site-packages/" in path else path.split("/")[-1]
    if "/services/" in path:
        short = "services/" + path.split("/services/", 1)[1]
    return f"{short}:{code.co_name}"


class Sampler:
    """Samples every other thread's stack in a daemon thread of its own until :meth:`stop`."""

    def __init__(self, focus: tuple[str, ...], *, main: bool = False, interval_s: float = 0.002) -> None:
        self.focus = focus
        self.main = main
        self.interval_s = interval_s
        self.own: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    @property
    def stopped(self) -> threading.Event:
        return self._stop

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        me = threading.get_ident()
        main = threading.main_thread().ident if self.main else None
        while not self._stop.wait(self.interval_s):
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                names = []
                f: FrameType | None = frame
                while f is not None:
                    names.append(_name(f))
                    f = f.f_back
                if ident != main and not any(n.startswith(self.focus) for n in names):
                    continue
                self.samples += 1
                self.own[names[0]] += 1
                self.inclusive.update(set(names))

    def report(self, top: int = 80) -> dict[str, Any]:
        """The ``top`` functions by own and by inclusive samples, as shares of all samples."""
        n = max(1, self.samples)
        return {
            "samples": self.samples,
            "own": [(name, round(count / n, 3)) for name, count in self.own.most_common(top)],
            "inclusive": [(name, round(count / n, 3)) for name, count in self.inclusive.most_common(top)],
        }


def main(argv: list[str]) -> None:
    out, focus, module, *args = argv
    sampler = Sampler(tuple(focus.split(",")), main=True).start()

    def save() -> None:
        Path(out).write_text(json.dumps(sampler.report(), indent=1))

    def save_every_second() -> None:  # a process killed before it exits still leaves its samples
        while not sampler.stopped.wait(1.0):
            save()

    def write() -> None:
        sampler.stop()
        save()

    threading.Thread(target=save_every_second, name="bench-sampler-save", daemon=True).start()

    def on_term(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        write()


if __name__ == "__main__":
    main(sys.argv[1:])
