"""Running an import: each row of an export file through its mapping, the ledger and the SDK.

Valid rows are published while bad ones are reported with their line and reasons; a row seen before
(in this file or an earlier import) is skipped. See :mod:`services.importers.ledger` for why a crash at
any point publishes no row twice.

Pseudonyms are asked for in batches: the rows are read :data:`BATCH_ROWS` at a time (fewer in the first
batches: :data:`FIRST_BATCH_ROWS`, doubling), mapped once with a pseudonymizer that only notes the
identifiers they need, and every one of those is evaluated in one call (the oblivious client splits it
into requests of at most the service's batch limit, in threads of their own: the next :data:`ASK_AHEAD`
batches are read and their pseudonyms asked for while this one is imported, as many requests in flight
at once; ``lianfang import`` has their arithmetic done in a process of its own); the rows are then
mapped again from that answer, their events sealed and signed, and the batch stored with one commit of the
SDK's outbox and one fsync of its audit file; only then are its rows entered in the ledger (one commit)
and counted as imported. While the pseudonymizer is away or busy, the rows are mapped
with stand-in pseudonyms and every event still goes to the SDK, which keeps it waiting in its outbox,
encrypted, with the identifiers each stand-in stands for, until the service answers; while leads wait
there, a row's other events wait behind them, so that no follow-up overtakes its lead, and the import asks
nothing of the service: the outbox's sender asks for the waiting leads' pseudonyms, oldest first, and a
request for rows that wait anyway would spend the participant's rate twice. The progress line says how
many leads wait and why (``rate_limited``, and when the next request goes).
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol, cast

from schemas.events import EventModel
from services.importers.errors import FileFormatError
from services.importers.ledger import Entry, Ledger
from services.importers.mapping import Filtered, Mapper, Publication, Read, Rejected, RowProblem
from services.importers.progress import Progress
from services.importers.reader import ExportFile, Line
from services.kernel.errors import LianfangError, TransportError, UntrustedInputError, UsageError
from services.kernel.pseudonym import Pseudonymizer, new_pseudonym_key
from services.pseudonymizer.client import PseudonymizerUnavailableError
from services.sdk.client import CaseContext, Sealed
from services.sdk.client import Publisher as SdkPublisher
from services.sdk.deferred import Prefetched, Recording
from services.sdk.outbox import ConflictError

BATCH_ROWS: Final = 256
"""Rows whose identifiers are evaluated in one call: a few identifiers a row stay within one request of
:data:`~services.kernel.oprf.MAX_BATCH` elements."""

FIRST_BATCH_ROWS: Final = 32
"""The first batch's rows; each next batch doubles, up to :data:`BATCH_ROWS`. The first answer comes back
soon, so rows are mapped and stored while the larger batches are asked for, instead of the import
waiting for a whole batch's pseudonyms before its first row."""

ASK_AHEAD: Final = 2
"""Batches whose pseudonyms are asked for while a batch is imported. The importer's client lets as many
requests be in flight (``Client(pseudonym_requests_in_flight=...)``), so that one request's client work
(blinding, checking the service's proof) overlaps the other's wait for the service; a client that allows
one request at a time sends them one after the other."""


class Publisher(SdkPublisher, Protocol):
    """What an import needs of :class:`services.sdk.client.Client`: publishing, its pseudonymizer, and
    how many leads wait in its outbox for the pseudonymizer."""

    @property
    def pseudonymizer(self) -> Pseudonymizer: ...

    def leads_waiting(self) -> int: ...

    def waiting_status(self) -> str:
        """Why leads wait, for the progress line (empty when none does)."""
        ...

    def defer_event(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        event_id: str | None = None,
        persons: Mapping[str, str] | None = None,
    ) -> str: ...


class DryRun:
    """A publisher that publishes nothing: rows are mapped and validated (with a throwaway
    pseudonym key, as no keystore is opened) and counted."""

    def __init__(self) -> None:
        self._key = new_pseudonym_key(0)

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self._key

    def leads_waiting(self) -> int:
        return 0

    def waiting_status(self) -> str:
        return ""

    def defer_event(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        event_id: str | None = None,
        persons: Mapping[str, str] | None = None,
    ) -> str:
        return event_id or ""

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
    say = progress.message if progress is not None else report
    run = _Run(mapper, publisher, ledger, summary, say, batch=_batching(publisher))
    asking = ThreadPoolExecutor(max_workers=ASK_AHEAD, thread_name_prefix="lianfang-import-pseudonyms")
    try:
        answers: deque[Future[dict[str, str]]] = deque()  # this batch's, then those asked ahead
        for chunk, after in _with_following(_chunks(export.lines(), _batch_sizes()), ASK_AHEAD):
            # The next batches' pseudonyms are asked for (and the service's proofs checked, in those
            # threads) while this batch is mapped, sealed and stored.
            for ask in [chunk, *after][len(answers) :]:
                answers.append(run.ask(asking, ask))
            run.use(answers.popleft())
            for line in chunk:
                summary.rows += 1
                if line.cells is None:
                    run.reject(line.number, [line.problem] if line.problem else [])
                else:
                    run.row(line.number, line.cells)
                if progress is not None:
                    progress.update(summary.rows, export.position, _detail(summary, run.waiting))
            run.flush()  # the batch's events with one commit, then its ledger entries with one
            run.waiting = publisher.waiting_status()
    except FileFormatError as e:
        summary.stopped = str(e)
    except TransportError as e:
        # The pseudonymizer (or the disk) failed us: the rows before are in the ledger, this row and the
        # rest are not, so running the same import again takes up exactly where this one stopped.
        summary.stopped = f"{e}; run the import again later: rows already imported are skipped"
    finally:
        asking.shutdown(wait=True, cancel_futures=True)
        ledger.commit()
        if progress is not None:
            progress.finish(summary.rows, export.position, _detail(summary, run.waiting))
    summary.unused_columns = list(export.unused_columns)
    return summary


def _batch_sizes() -> Iterator[int]:
    """:data:`FIRST_BATCH_ROWS`, then twice the one before, up to :data:`BATCH_ROWS` (read when called)."""
    size = min(FIRST_BATCH_ROWS, BATCH_ROWS)
    while True:
        yield size
        size = min(2 * size, BATCH_ROWS)


def _chunks(lines: Iterable[Line], sizes: Iterator[int]) -> Iterator[list[Line]]:
    """The lines in lists of the next of ``sizes`` each; a file that cannot be read further ends with the
    lines read before it, then its :class:`FileFormatError`."""
    chunk: list[Line] = []
    size = next(sizes)
    try:
        for line in lines:
            chunk.append(line)
            if len(chunk) == size:
                yield chunk
                chunk = []
                size = next(sizes)
    except FileFormatError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _with_following(
    chunks: Iterator[list[Line]], ahead: int = 1
) -> Iterator[tuple[list[Line], list[list[Line]]]]:
    """Each chunk with up to ``ahead`` chunks after it, read ahead (fewer near the end); a file that
    cannot be read further raises its :class:`FileFormatError` only after every chunk read before it."""
    error: FileFormatError | None = None

    def following() -> list[Line] | None:
        nonlocal error
        if error is not None:
            return None
        try:
            return next(chunks)
        except StopIteration:
            return None
        except FileFormatError as e:
            error = e
            return None

    window: deque[list[Line]] = deque()
    while True:
        while len(window) <= ahead and (chunk := following()) is not None:
            window.append(chunk)
        if not window:
            break
        current = window.popleft()
        yield current, list(window)
    if error is not None:
        raise error


def _detail(summary: Summary, waiting: str = "") -> str:
    text = f"imported {summary.imported}  skipped {summary.already}  rejected {summary.rejected}"
    return f"{text}  {waiting}" if waiting else text


class BatchPublisher(Protocol):
    """A publisher that seals events ahead and stores a batch of them with one commit (the SDK
    :class:`~services.sdk.client.Client`); an import through any other publishes event by event."""

    def seal_lead(self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str) -> Sealed: ...

    def seal_event(
        self, event: EventModel, *, context: CaseContext, urgency: str = "routine", event_id: str
    ) -> Sealed: ...

    def put_sealed(self, batch: Sequence[Sealed]) -> list[bool]: ...


def _batching(publisher: Publisher) -> BatchPublisher | None:
    seal_lead, seal_event, put_sealed = (
        getattr(publisher, name, None) for name in ("seal_lead", "seal_event", "put_sealed")
    )
    if callable(seal_lead) and callable(seal_event) and callable(put_sealed):
        return cast(BatchPublisher, publisher)
    return None


@dataclass
class _Row:
    """A mapped row's events as they are published: some may be sealed and wait for their batch's
    commit (``staged``); the row is counted once none waits."""

    number: int
    content: str
    earlier: Entry | None = None  # imported before, with other content
    published: int = 0
    rejected: bool = False
    staged: list[tuple[str, Publication, Sealed]] = field(default_factory=list)  # (ledger key, ...)


@dataclass
class _Run:
    mapper: Mapper
    publisher: Publisher
    ledger: Ledger
    summary: Summary
    say: Report
    current: Mapper | None = None  # the mapper of this batch of rows, its pseudonyms evaluated
    stand_ins: Recording | None = None  # the pseudonymizer did not answer this batch: what stood in
    leads_wait: bool = False  # leads wait in the outbox (asked once a batch, then set when one may)
    batch: BatchPublisher | None = None  # seals ahead; None: every event is published on its own
    waiting_rows: list[_Row] = field(default_factory=list)  # rows with events sealed, not yet stored
    staged_keys: dict[str, Entry] = field(default_factory=dict)  # their ledger entries-to-be
    waiting: str = ""  # why leads wait in the outbox, for the progress line (once a batch)
    read_ahead: dict[int, Read] = field(default_factory=dict)  # rows read by ask(), by line number

    def ask(self, asking: Executor, lines: Sequence[Line]) -> Future[dict[str, str]]:
        """Ask (in ``asking``) for every identifier these rows need, in one call: the rows are read here
        (and kept for :meth:`row`), and a pseudonymizer that only notes is asked what mapping them
        would ask. While leads wait in the outbox nothing is asked: these rows wait behind them with
        stand-ins, and the outbox's sender asks for them."""
        if self.publisher.leads_waiting():
            behind: Future[dict[str, str]] = Future()
            behind.set_exception(
                PseudonymizerUnavailableError("leads wait in the outbox", code="behind_waiting_leads")
            )
            return behind
        recorder = Recording(0)
        probe = self.mapper.using(recorder)
        for line in lines:
            if line.cells is not None:
                # Read once: the row is mapped from this record when its turn comes, and its problems
                # reported then (a failure to read it here too: it is read again in its turn).
                with contextlib.suppress(LianfangError):
                    self.read_ahead[line.number] = read = self.mapper.read(line.cells)
                    probe.ask_pseudonyms(read, self._lead_id(line.cells))
        return asking.submit(_evaluate, self.publisher.pseudonymizer, list(recorder.asked))

    def _lead_id(self, cells: Mapping[str, str]) -> str:
        """The event id :meth:`row` gives the row's lead: a victim without any identifier is kept under
        a pseudonym derived from it, which the first pass asks for too."""
        identity, _ = self.mapper.identity(cells)
        return self.ledger.event_id(self.ledger.key(self.mapper.spec.name, "lead", identity))

    def use(self, answer: Future[dict[str, str]]) -> None:
        """Map the next rows with the pseudonyms of ``answer``; while the service is away or busy, with
        stand-in pseudonyms (leads then wait in the outbox; see :meth:`row`)."""
        self.stand_ins = None
        self.leads_wait = self.publisher.leads_waiting() > 0
        pseudonymizer = self.publisher.pseudonymizer
        try:
            known = answer.result()
        except PseudonymizerUnavailableError as e:
            if not e.transient:
                raise
            self.stand_ins = Recording(0)
            self.current = self.mapper.using(self.stand_ins)
            return
        self.current = self.mapper.using(Prefetched(known, fallback=pseudonymizer))

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

        read = self.read_ahead.pop(number) if number in self.read_ahead else self.mapper.read(cells)
        result = (self.current or self.mapper).map_read(read, event_ids)
        if isinstance(result, Filtered):
            self.summary.filtered += 1
            return
        if isinstance(result, Rejected):
            self.reject(number, result.problems)
            return
        # Behind waiting leads (or with stand-in pseudonyms) a row's other events wait too.
        waiting = self.leads_wait if self.batch is not None else self.publisher.leads_waiting() > 0
        wait = self.stand_ins is not None or waiting
        persons = self.stand_ins.persons if self.stand_ins is not None else {}
        row = _Row(number, content_digest)
        for publication in result:
            key = keys[publication.emit]
            entry = self.ledger.get(key) or self.staged_keys.get(key)
            if entry is not None:
                row.earlier = row.earlier or (entry if entry.content != content_digest else None)
                continue
            try:
                sealed = None if wait else self._seal(publication)
                if sealed is None:
                    if self.batch is not None:
                        # It may wait in the outbox: the row's and the batch's next events wait too (only
                        # this import adds waiting leads; the drainer's sealing them is not awaited).
                        wait = self.leads_wait = True
                    self.flush(row)  # what was sealed before goes first: no event overtakes another
                    recovered = _publish(self.publisher, publication, wait=wait, persons=persons)
            except UntrustedInputError as e:  # the SDK refused what the mapping accepted
                self.reject(number, [str(e.args[0]) if e.args else e.reason])
                row.rejected = True
                break
            except UsageError as e:
                self.reject(number, [str(e)])
                row.rejected = True
                break
            if sealed is None:
                self._record(row, key, publication, recovered=recovered)
            else:
                row.staged.append((key, publication, sealed))
                self.staged_keys[key] = Entry(key, publication.event_id, content_digest,
                                              self.summary.file, number, recovered=False)  # fmt: skip
        if row.staged:
            self.waiting_rows.append(row)  # counted once its events are on disk
        else:
            self._count(row)

    def _seal(self, publication: Publication) -> Sealed | None:
        """The sealed event, to be stored with its batch; ``None`` when it is to be published on its own
        (no batching publisher, or a lead whose pseudonyms cannot be had now: it waits in the outbox)."""
        if self.batch is None:
            return None
        if publication.lead is not None:
            try:
                return self.batch.seal_lead(
                    publication.lead, urgency=publication.urgency, event_id=publication.event_id
                )
            except PseudonymizerUnavailableError as e:
                if not e.transient:
                    raise
                return None
        assert publication.event is not None
        assert publication.context is not None
        return self.batch.seal_event(
            publication.event,
            context=publication.context,
            urgency=publication.urgency,
            event_id=publication.event_id,
        )

    def flush(self, current: _Row | None = None) -> None:
        """Store every sealed event (and ``current``'s) with one commit, then record them in the ledger
        and commit it: a row is counted, and entered in the ledger, only once its events are on disk.
        Raises what storing raised; then nothing of the batch is counted or entered."""
        rows = [*self.waiting_rows, *([current] if current is not None and current.staged else [])]
        self.waiting_rows = []
        self.staged_keys.clear()
        if not rows:
            return
        assert self.batch is not None
        accepted = iter(self.batch.put_sealed([sealed for row in rows for _, _, sealed in row.staged]))
        for row in rows:
            for key, publication, _ in row.staged:
                self._record(row, key, publication, recovered=not next(accepted))
            row.staged = []
            if row is not current:
                self._count(row)
        self.ledger.commit()

    def _record(self, row: _Row, key: str, publication: Publication, *, recovered: bool) -> None:
        """Enter a stored event in the ledger (``recovered``: the outbox had its id from an interrupted
        earlier import)."""
        self.ledger.add(
            key=key,
            event_id=publication.event_id,
            content=row.content,
            fmt=self.mapper.spec.name,
            emit=publication.emit,
            event_type=publication.event_type,
            file=self.summary.file,
            line=row.number,
            recovered=recovered,
        )
        if recovered:
            self.summary.recovered += 1
        else:
            row.published += 1
            self.summary.events[publication.event_type] += 1

    def _count(self, row: _Row) -> None:
        """Count a row whose events are all stored (or were before)."""
        if row.rejected:
            return
        if row.published:
            self.summary.imported += 1
            return
        self.summary.already += 1
        if row.earlier is not None:
            self.summary.changed += 1
            self.say(
                f"line {row.number}: was imported before (line {row.earlier.line} of {row.earlier.file}) "
                "and has changed since; the change is not published (report it as a follow-up event "
                "instead)"
            )


def _evaluate(pseudonymizer: Pseudonymizer, asked: list[str]) -> dict[str, str]:
    return dict(zip(asked, pseudonymizer.pseudonyms(asked), strict=True)) if asked else {}


def _publish(
    publisher: Publisher, publication: Publication, *, wait: bool, persons: Mapping[str, str]
) -> bool:
    """Publish, or (``wait``) have the event wait in the outbox behind the leads there, its stand-in
    pseudonyms to be replaced (``persons``); True when the outbox already had this event id (an
    interrupted earlier import)."""
    try:
        if publication.lead is not None:  # a lead waits by itself when it has to
            publisher.publish_lead(
                publication.lead, urgency=publication.urgency, event_id=publication.event_id
            )
        elif wait:
            assert publication.event is not None
            assert publication.context is not None
            publisher.defer_event(
                publication.event,
                context=publication.context,
                urgency=publication.urgency,
                event_id=publication.event_id,
                persons=persons,
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
