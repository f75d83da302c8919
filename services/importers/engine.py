"""Running an import: each row of an export file through its mapping, the ledger and the SDK.

Valid rows are published while bad ones are reported with their line and reasons; a row seen before
(in this file or an earlier import) is skipped. See :mod:`services.importers.ledger` for why a crash at
any point publishes no row twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas.events import EventModel
from services.importers.errors import FileFormatError
from services.importers.ledger import Ledger
from services.importers.mapping import Filtered, Mapper, Publication, Rejected, RowProblem
from services.importers.progress import Progress
from services.importers.reader import ExportFile
from services.kernel.errors import TransportError, UntrustedInputError, UsageError
from services.kernel.pseudonym import Pseudonymizer, new_pseudonym_key
from services.sdk.client import CaseContext
from services.sdk.client import Publisher as SdkPublisher
from services.sdk.outbox import ConflictError


class Publisher(SdkPublisher, Protocol):
    """What an import needs of :class:`services.sdk.client.Client`: publishing and its pseudonymizer."""

    @property
    def pseudonymizer(self) -> Pseudonymizer: ...


class DryRun:
    """A publisher that publishes nothing: rows are mapped and validated (with a throwaway
    pseudonym key, as no keystore is opened) and counted."""

    def __init__(self) -> None:
        self._key = new_pseudonym_key(0)

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self._key

    def publish_lead(
        self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str | None = None
    ) -> str:
        return event_id or ""

    def publish(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        audience: Sequence[str] = (),
        event_id: str | None = None,
    ) -> str:
        return event_id or ""


@dataclass
class Summary:
    """What an import did, row by row and event by event."""

    file: str
    format: str
    encoding: str
    participant: str
    rows: int = 0
    imported: int = 0  # rows with at least one event published now
    already: int = 0  # rows whose events were all imported before
    recovered: int = 0  # events found in the outbox after an interrupted import
    changed: int = 0  # rows imported before whose content has changed since (not re-published)
    filtered: int = 0  # rows the format says are not leads
    rejected: int = 0
    events: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # the file could not be read to its end
    unused_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.stopped is None


Report = Callable[[str], None]


def run_import(
    export: ExportFile,
    *,
    participant: str,
    publisher: Publisher,
    ledger: Ledger,
    now: datetime,
    report: Report,
    progress: Progress | None = None,
) -> Summary:
    """Import every row of ``export``; ``report`` receives one line per rejected or changed row."""
    spec = export.spec
    mapper = Mapper(spec, participant=participant, pseudonymizer=publisher.pseudonymizer, now=now)
    summary = Summary(export.path.name, spec.name, export.encoding, participant)
    run = _Run(mapper, publisher, ledger, summary, progress.message if progress is not None else report)
    try:
        for line in export.lines():
            summary.rows += 1
            if line.cells is None:
                run.reject(line.number, [line.problem] if line.problem else [])
            else:
                run.row(line.number, line.cells)
            if progress is not None:
                progress.update(summary.rows, export.position, _detail(summary))
    except FileFormatError as e:
        summary.stopped = str(e)
    except TransportError as e:
        # The pseudonymizer (or the disk) failed us: the rows before are in the ledger, this row and the
        # rest are not, so running the same import again takes up exactly where this one stopped.
        summary.stopped = f"{e}; run the import again later: rows already imported are skipped"
    finally:
        ledger.commit()
        if progress is not None:
            progress.finish(summary.rows, export.position, _detail(summary))
    summary.unused_columns = list(export.unused_columns)
    return summary


def _detail(summary: Summary) -> str:
    return f"imported {summary.imported}  skipped {summary.already}  rejected {summary.rejected}"


@dataclass
class _Run:
    mapper: Mapper
    publisher: Publisher
    ledger: Ledger
    summary: Summary
    say: Report

    def reject(self, number: int, problems: Sequence[RowProblem | str]) -> None:
        self.summary.rejected += 1
        self.say(f"line {number}: " + "; ".join(str(p) for p in problems))

    def row(self, number: int, cells: Mapping[str, str]) -> None:
        fmt = self.mapper.spec.name
        identity, content = self.mapper.identity(cells)
        content_digest = self.ledger.content_digest(fmt, content)
        keys: dict[str, str] = {}

        def event_ids(emit: str) -> str:
            keys[emit] = self.ledger.key(fmt, emit, identity)
            return self.ledger.event_id(keys[emit])

        result = self.mapper.map_row(cells, event_ids)
        if isinstance(result, Filtered):
            self.summary.filtered += 1
            return
        if isinstance(result, Rejected):
            self.reject(number, result.problems)
            return
        published = 0
        earlier = None
        for publication in result:
            key = keys[publication.emit]
            entry = self.ledger.get(key)
            if entry is not None:
                earlier = earlier or (entry if entry.content != content_digest else None)
                continue
            try:
                recovered = _publish(self.publisher, publication)
            except UntrustedInputError as e:  # the SDK refused what the mapping accepted
                self.reject(number, [str(e.args[0]) if e.args else e.reason])
                return
            except UsageError as e:
                self.reject(number, [str(e)])
                return
            self.ledger.add(
                key=key,
                event_id=publication.event_id,
                content=content_digest,
                fmt=fmt,
                emit=publication.emit,
                event_type=publication.event_type,
                file=self.summary.file,
                line=number,
                recovered=recovered,
            )
            if recovered:
                self.summary.recovered += 1
            else:
                published += 1
                self.summary.events[publication.event_type] += 1
        if published:
            self.summary.imported += 1
            return
        self.summary.already += 1
        if earlier is not None:
            self.summary.changed += 1
            self.say(
                f"line {number}: was imported before (line {earlier.line} of {earlier.file}) and has "
                "changed since; the change is not published (report it as a follow-up event instead)"
            )


def _publish(publisher: Publisher, publication: Publication) -> bool:
    """Publish; True when the outbox already had this event id (an interrupted earlier import)."""
    try:
        if publication.lead is not None:
            publisher.publish_lead(
                publication.lead, urgency=publication.urgency, event_id=publication.event_id
            )
        else:
            assert publication.event is not None
            assert publication.context is not None
            publisher.publish(
                publication.event,
                context=publication.context,
                urgency=publication.urgency,
                event_id=publication.event_id,
            )
    except ConflictError:
        return True
    return False
