"""Run fuzz targets and report per target: inputs run, seconds, crashes and the seed.

The pure targets run under atheris, one process each; they split the input budget by :data:`SHARES`
and each stops at its share of inputs or at its time cap, whichever comes first. A crash is an
uncaught exception (not a ``LianfangError``), an input that runs longer than :data:`HANG_S` (a hang),
or the process dying; the input that crashed is kept in the artifacts folder. The gateway target
(:mod:`tests.fuzz.gateway`) sends schemathesis-generated requests to a gateway in this process, whose
inbox is read from ``LIANFANG_BOOTSTRAP`` or from a Kafka started here for the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from deploy.kafka.local import running
from tests.fuzz.gateway import fuzz_gateway, running_gateway
from tests.fuzz.targets import TARGETS, scratch_folder

SHARES: Final = {"router_raw": 0.6, "router_signed": 0.25, "importer": 0.15}
"""The share of the input budget each target gets: the raw parser is fast, sealing is not."""
MAX_LEN: Final = 8192
HANG_S: Final = 10
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")


@dataclass(frozen=True)
class Outcome:
    target: str
    inputs: int
    seconds: float
    crashes: int
    seed: int
    artifacts: tuple[Path, ...]
    log: str

    def line(self) -> str:
        found = "".join(f"\n    crashing input: {p}" for p in self.artifacts)
        return (
            f"{self.target:<14} inputs {self.inputs:>9,}  seconds {self.seconds:7.1f}  "
            f"crashes {self.crashes}  seed {self.seed}{found}"
        )


def fuzz(target: str, *, runs: int, max_seconds: float, seed: int, artifacts: Path, scratch: Path) -> Outcome:
    """Run one target in a child process until ``runs`` inputs or ``max_seconds``."""
    artifacts.mkdir(parents=True, exist_ok=True)
    folder = scratch / target
    folder.mkdir()
    args = [
        f"-runs={runs}",
        f"-seed={seed}",
        f"-max_total_time={max(1, int(max_seconds))}",
        f"-timeout={HANG_S}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={artifacts}/{target}-",
        "-print_final_stats=1",
        "-print_pcs=0",
    ]
    started = time.monotonic()
    before = set(artifacts.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.worker", target, str(folder), *args],
        capture_output=True,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": str(seed)},
    )
    seconds = time.monotonic() - started
    executed = _EXECUTED.findall(done.stderr)
    found = tuple(sorted(set(artifacts.iterdir()) - before))
    crashed = done.returncode != 0
    log = done.stderr.decode("utf-8", "replace")
    return Outcome(
        target=target,
        inputs=int(executed[-1]) if executed else 0,
        seconds=seconds,
        crashes=1 if crashed or found else 0,
        seed=seed,
        artifacts=found,
        log=log,
    )


def fuzz_all(
    *, inputs: int, max_seconds: float, seed: int, artifacts: Path, targets: tuple[str, ...] = TARGETS
) -> list[Outcome]:
    """Each target in turn with its share of ``inputs`` (at most ``max_seconds`` each)."""
    scratch = scratch_folder()
    try:
        total = sum(SHARES[t] for t in targets)
        return [
            fuzz(
                name,
                runs=max(1, round(inputs * SHARES[name] / total)),
                max_seconds=max_seconds,
                seed=seed,
                artifacts=artifacts,
                scratch=scratch,
            )
            for name in targets
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fuzz_the_gateway(*, examples: int, seed: int) -> Outcome:
    """The gateway target: ``examples`` requests an operation and generation mode, each sent twice."""
    scratch = scratch_folder()
    started = time.monotonic()
    try:
        bootstrap = os.environ.get("LIANFANG_BOOTSTRAP")
        with contextlib.ExitStack() as stack:
            if not bootstrap:
                bootstrap = stack.enter_context(running(scratch / "kafka")).bootstrap
            gw = stack.enter_context(
                running_gateway(scratch / "gateway", bootstrap=bootstrap, prefix=f"fuzz-{os.getpid()}.")
            )
            outcome = fuzz_gateway(gw, examples=examples, seed=seed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(outcome.statuses.items()))
    return Outcome(
        target="gateway",
        inputs=outcome.requests,
        seconds=time.monotonic() - started,
        crashes=len(outcome.findings),
        seed=seed,
        artifacts=(),
        log="\n".join([f"answers by status: {statuses}", *outcome.findings]),
    )
