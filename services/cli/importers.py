"""The ``lianfang import`` subcommand.

``services/cli/main.py`` registers them with :func:`add_commands`; each handler returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from services import trust
from services.cli.args import bootstrap_of as _bootstrap
from services.cli.args import bus_parent
from services.cli.args import home_of as _home
from services.importers.engine import ASK_AHEAD, DryRun, Publisher, Summary, run_import
from services.importers.ledger import Ledger
from services.importers.progress import Progress
from services.importers.reader import ENCODINGS, ExportFile
from services.importers.spec import FormatSpec, format_names, load_format
from services.kernel.errors import UsageError
from services.kernel.registry import Registry
from services.pseudonymizer.client import work_process
from services.sdk.client import Client

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_STATUS = """\
exit status:
  0  every row was imported, skipped as already imported, or is not a lead for this format
  1  some rows were rejected (the others were imported; each rejection is reported with its line),
     or the file could not be read to its end
  2  nothing was imported: bad options, an unknown format or participant, a participant that may not
     publish what the format produces, a file that is missing, empty, in another encoding, or whose
     header lacks a required column
Re-running the same command after fixing the rejected rows imports only those rows."""


def add_commands(
    subcommands: Subcommands,
    common: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., Subcommands],
) -> None:
    """Register ``import``. ``group`` is unused: it is a single command."""
    del group
    bus = bus_parent(common)

    imp = command(
        subcommands,
        "import",
        cmd_import,
        bus,
        "import an agency's export file (CSV or JSON Lines) as leads or protection orders",
    )
    imp.formatter_class = argparse.RawDescriptionHelpFormatter
    imp.epilog = EXIT_STATUS
    imp.add_argument("--as", dest="participant", required=True, metavar="P", help="the importing participant")
    imp.add_argument(
        "--format", dest="format", required=True, choices=format_names(), help="the export's format"
    )
    imp.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="auto",
        help="the file's encoding (default auto: UTF-8 if the whole file is UTF-8, else GB18030)",
    )
    imp.add_argument(
        "--dry-run",
        action="store_true",
        help="check every row and report; publish nothing, record nothing, need no Kafka or passphrase",
    )
    imp.add_argument(
        "--flush-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for Kafka to acknowledge the imported events (default 60)",
    )
    imp.add_argument(
        "--progress-every",
        type=int,
        default=1000,
        metavar="N",
        help="when stderr is not a terminal, a progress line every N rows (default 1000)",
    )
    imp.add_argument("file", type=Path, metavar="FILE", help="the export file")


# --------------------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace) -> int:
    home = _home(args)
    now: datetime = getattr(args, "now", None) or datetime.now(UTC)
    participant: str = args.participant
    spec = load_format(args.format)
    if args.progress_every < 1:
        raise UsageError("--progress-every must be at least 1")
    # The pool is closed after the client (the outbox's sender may still ask for waiting leads' pseudonyms);
    # its process starts only if the registry names a pseudonymizer and a row needs one.
    with ExportFile.open(args.file, spec, args.encoding) as export, work_process() as work:
        registry = trust.TrustDomain(home=home, passphrase="").registry(now)
        _check_participant(registry, participant, spec)
        client: Client | None = None
        publisher: Publisher
        if args.dry_run:
            publisher = DryRun()
            ledger = Ledger.open_for_dry_run(home, participant)
        else:
            client = Client.open(
                participant=participant,
                home=home,
                bootstrap=_bootstrap(args),
                topic_prefix=args.topic_prefix,
                pseudonym_requests_in_flight=ASK_AHEAD,  # the batches the import asks for ahead
                pseudonym_work=work,  # their arithmetic in a process of its own: the import uses 2 CPUs
            )
            publisher = client
            ledger = Ledger.open(home, participant)
        progress = Progress(total_bytes=export.size, every=args.progress_every)
        try:
            summary = run_import(
                export,
                participant=participant,
                publisher=publisher,
                ledger=ledger,
                now=now,
                report=_stderr,
                progress=progress,
            )
        finally:
            ledger.close()
            outbox = _finish(client, args.flush_timeout)
    print(describe(summary, dry_run=args.dry_run))
    if outbox:
        print(outbox)
    if summary.stopped:
        _stderr(f"error: {summary.stopped}")
    return 0 if summary.ok else 1


def _check_participant(registry: Registry, participant: str, spec: FormatSpec) -> None:
    if participant not in registry.participant_ids():
        raise UsageError(f"{participant!r} is not a participant of registry v{registry.version}")
    allowed = registry.participant(participant).may_publish
    refused = [t for t in spec.event_types() if t not in allowed]
    if refused:
        raise UsageError(
            f"{participant} may not publish {', '.join(refused)}, which the {spec.name} format produces; "
            f"this format is imported as {' or '.join(spec.participants)}"
        )
    if not spec.usual_participant(participant):
        _stderr(
            f"note: {spec.name} exports usually come from {' or '.join(spec.participants)}, "
            f"not {participant}; importing as {participant}"
        )


def _finish(client: Client | None, timeout: float, say: Callable[[str], None] | None = None) -> str:
    """Wait for Kafka to take the imported events, saying every :data:`STATUS_EVERY_S` what is left and
    why (leads rate-limited by the pseudonymizer, Kafka away); say where they are if it did not in time."""
    if client is None:
        return ""
    try:
        done = _drain(client, timeout, say or _stderr)
        depth = client.outbox.depth()
        waiting = client.leads_waiting()
        status = client.waiting_status()
        path = client.outbox.path
    finally:
        client.close()
    if done:
        return "outbox: every accepted event was acknowledged by Kafka"
    why = client.drainer.last_error or "no answer"
    if waiting:
        why = f"{status}, encrypted; {why}"
    advice = (
        "; the pseudonymizer rate-limits this participant: wait longer (--flush-timeout), or ask its "
        "operator for a rate of its own for this import (LIANFANG_PSEUDONYMIZER_RATES, see "
        "docs/operations.md)"
        if "rate_limited" in status
        else ""
    )
    return (
        f"outbox: {depth} event(s) wait in {path} for Kafka ({why}); "
        f"they are safe on disk and are sent the next time {client.participant} publishes "
        f"(run this import again: it publishes nothing twice){advice}"
    )


STATUS_EVERY_S: Final = 10.0
"""How often an import waiting for its outbox to drain says what is left."""


def _drain(client: Client, timeout: float, say: Callable[[str], None]) -> bool:
    """:meth:`Client.flush` for up to ``timeout`` seconds, with a line every :data:`STATUS_EVERY_S`:
    how many events are left and why they wait (an import of many rows at a rate-limited participant
    would otherwise sit silent for as long as it takes)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if client.flush(max(0.0, min(left, STATUS_EVERY_S))):
            return True
        if time.monotonic() >= deadline:
            return False
        status = (
            client.waiting_status() or f"waiting for Kafka ({client.drainer.last_error or 'no answer yet'})"
        )
        say(f"outbox: {client.outbox.depth():,} event(s) to send; {status}")


def describe(summary: Summary, *, dry_run: bool = False) -> str:
    """The summary printed at the end of an import."""
    verb = "would be imported" if dry_run else "imported"
    events = ", ".join(f"{n} {t}" for t, n in sorted(summary.events.items())) or "no events"
    lines = [
        f"{summary.file}: {summary.rows} rows ({summary.format}, {summary.encoding}) as {summary.participant}"
        + (" — dry run, nothing published" if dry_run else ""),
        f"  {verb:<18} {summary.imported:>6}   ({events})",
        f"  {'already imported':<18} {summary.already:>6}"
        + (f"   ({summary.changed} changed since, not re-published)" if summary.changed else ""),
    ]
    if summary.recovered:
        found = f"({summary.recovered} event(s) found in the outbox of an interrupted import)"
        lines.append(f"  {'':<25}   {found}")
    if summary.filtered:
        lines.append(f"  {'not leads':<18} {summary.filtered:>6}")
    rejected = f"  {'rejected':<18} {summary.rejected:>6}"
    lines.append(rejected + ("   (reasons above, by line)" if summary.rejected else ""))
    if summary.unused_columns:
        unused = ", ".join(summary.unused_columns)
        lines.append(f"  columns not used by the {summary.format} format: {unused}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
