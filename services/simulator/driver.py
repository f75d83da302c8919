"""Publishing a simulated district: one SDK client per sender, the steps in time order, a summary.

The generator's event ids are placeholders; each published event gets a fresh UUIDv7 and references
to it (``lead_id``, ``request_id``, ``order_id``, ``alert_id``, the context's lead) are rewritten, so
running the same seed twice on one bus publishes new events rather than replays. The envelope's time is
when the event is published (signed now, as the router requires); the simulated times are in the
events' own fields (``occurred_at``, ``acknowledged_at``, ``due_at``, ...).

Played at a ``speed`` (the demo), each step is published when its simulated time comes, sped up, and
every time in its payload is mapped onto the wall clock the same way (:func:`retime`): the district's
clock runs ``speed`` times faster and its times are the wall clock's, so an incident's ``occurred_at``
is just before its lead is published and an action item is due ``7 days / speed`` after its meeting.
The hub, run at the same time scale (``LIANFANG_HUB_TIME_SCALE``), then sees deadlines pass and
breaches happen as the district would, ``speed`` times faster.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from schemas.events import event_model
from services import trust
from services.importers.progress import Progress
from services.importers.values import CHINA
from services.kernel import envelope
from services.kernel.errors import UsageError
from services.kernel.pseudonym import new_pseudonym_key
from services.pseudonymizer.client import PseudonymizerUnavailableError
from services.sdk.client import CaseContext, Client, Publisher
from services.simulator.generator import ID_FIELDS, RULES, Step, generate
from services.simulator.runs import FIRST_SEED, take_seed

Sender = Publisher
"""What the driver needs of :class:`services.sdk.client.Client`."""


@dataclass
class Tally:
    """What was published: counts per event type, per sender and per rule case."""

    by_type: Counter[str] = field(default_factory=Counter)
    by_sender: Counter[str] = field(default_factory=Counter)
    by_case: Counter[str] = field(default_factory=Counter)

    def count(self, step: Step) -> None:
        self.by_type[step.type] += 1
        self.by_sender[step.sender] += 1
        if step.kind == "lead":
            self.by_case[step.case] += 1

    @property
    def total(self) -> int:
        return sum(self.by_type.values())


class IdMap:
    """Placeholder id → the fresh id it was given (made on first sight)."""

    def __init__(self, new_id: Callable[[], str] = envelope.new_event_id) -> None:
        self.new_id = new_id
        self.ids: dict[str, str] = {}

    def __call__(self, placeholder: str) -> str:
        if placeholder not in self.ids:
            self.ids[placeholder] = self.new_id()
        return self.ids[placeholder]

    def payload(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: self(value) if name in ID_FIELDS and isinstance(value, str) else value
            for name, value in payload.items()
        }

    def context(self, context: CaseContext | None) -> CaseContext | None:
        if context is None or context.lead_id is None:
            return context
        return replace(context, lead_id=self(context.lead_id))


TIME_FIELDS: Final = frozenset(
    {
        "occurred_at",
        "acknowledged_at",
        "taken_at",
        "resolved_at",
        "requested_at",
        "decided_at",
        "valid_until",
        "breached_at",
        "meeting_at",
        "concluded_at",
        "due_at",
    }
)
"""Payload fields, at any depth, that hold a simulated time (the generator writes them as ISO 8601)."""


def retime(value: Any, to_wall: Callable[[datetime], datetime]) -> Any:
    """``value`` with every simulated time of :data:`TIME_FIELDS` mapped by ``to_wall``, at any depth."""
    if isinstance(value, Mapping):
        return {
            name: to_wall(datetime.fromisoformat(item)).isoformat()
            if name in TIME_FIELDS and isinstance(item, str)
            else retime(item, to_wall)
            for name, item in value.items()
        }
    if isinstance(value, list):
        return [retime(item, to_wall) for item in value]
    return value


def publish_step(
    sender: Sender, step: Step, ids: IdMap, to_wall: Callable[[datetime], datetime] | None = None
) -> str:
    """Publish one step through its sender's client, with fresh ids (and its times on the wall clock,
    with ``to_wall``)."""
    event_id = ids(step.event_id)
    payload = ids.payload(step.payload)
    if to_wall is not None:
        payload = retime(payload, to_wall)
    if step.kind == "lead":
        return sender.publish_lead(payload, urgency=step.urgency, event_id=event_id)
    context = ids.context(step.context)
    if context is None:
        raise UsageError(f"step {step.seq} ({step.type}) has no case context")
    event = event_model(step.type).model_validate_json(json.dumps(payload, ensure_ascii=False))
    return sender.publish(
        event, context=context, urgency=step.urgency or "routine", audience=step.audience, event_id=event_id
    )


def play(
    steps: Sequence[Step],
    senders: Mapping[str, Sender],
    *,
    start: datetime,
    speed: float | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], datetime] = lambda: datetime.now(CHINA),
) -> Tally:
    """Publish ``steps`` in order; with ``speed``, each when its simulated time comes (sped up), its
    payload's times mapped onto the wall clock (``start`` is now, then each simulated second is
    ``1 / speed`` of a second)."""
    ids = IdMap()
    tally = Tally()
    began = clock()
    to_wall: Callable[[datetime], datetime] | None = None
    if speed is not None:
        origin, pace = wall(), speed

        def to_wall(at: datetime) -> datetime:
            return origin + (at - start) / pace

    for index, step in enumerate(steps, start=1):
        if speed is not None:
            due = began + (step.at - start).total_seconds() / speed
            while (left := due - clock()) > 0:
                sleep(min(left, 1.0))
        publish_step(senders[step.sender], step, ids, to_wall)
        tally.count(step)
        if progress is not None:
            progress.update(index, index, f"{step.at:%Y-%m-%d %H:%M}")
    if progress is not None:
        progress.finish(len(steps), len(steps))
    return tally


def describe(tally: Tally, *, steps: Iterable[Step] = (), dry_run: bool = False) -> str:
    """The end-of-run summary: counts per event type, per sender, and leads per rule case."""
    verb = "would publish" if dry_run else "published"
    lines = [f"simulation {verb} {tally.total} events"]
    lines.append("  by type:")
    lines += [f"    {n:>6}  {t}" for t, n in sorted(tally.by_type.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines.append("  by sender:")
    lines += [f"    {n:>6}  {s}" for s, n in sorted(tally.by_sender.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines.append("  leads per joint-meeting rule case (the hub should alert on each):")
    lines += [f"    {tally.by_case.get(rule, 0):>6}  {rule}" for rule in RULES]
    lines.append(f"    {tally.by_case.get('background', 0):>6}  background leads (some also meet a rule)")
    listed = list(steps)
    if listed:
        towns = {s.payload["town"] for s in listed if s.kind == "lead"}
        channels = {s.payload["channel"] for s in listed if s.kind == "lead"}
        lines.append(f"  leads came from {len(channels)} channels and {len(towns)} towns")
    return "\n".join(lines)


def dry_tally(steps: Iterable[Step]) -> Tally:
    tally = Tally()
    for step in steps:
        tally.count(step)
    return tally


def open_senders(names: Iterable[str], opener: Callable[[str], Client]) -> dict[str, Client]:
    """One client per sender, opened one after the other: each keystore takes an Argon2id derivation,
    and OpenSSL's Argon2 (in ``cryptography``) deadlocks when several threads derive at once."""
    return {name: opener(name) for name in sorted(set(names))}


def simulate_command(
    *,
    home: Path,
    bootstrap: str | None,
    topic_prefix: str,
    days: int,
    seed: int | None,
    rate: float,
    speed: float | None,
    dry_run: bool,
    state: Path | None = None,
) -> int:
    """``lianfang simulate``: generate the days and publish them (or only summarize, ``dry_run``).
    Without a ``seed``, the seed is the next of ``state`` (:mod:`services.simulator.runs`), else 1."""
    if speed is not None and speed <= 0:
        raise UsageError("--speed must be greater than 0")
    if rate < 0:
        raise UsageError("--rate must not be negative")
    now = datetime.now(CHINA)
    start = now - timedelta(days=days) if speed is None else now
    if seed is None:
        seed = take_seed(state) if state is not None and not dry_run else FIRST_SEED
    if dry_run:
        steps = generate(seed=seed, start=start, days=days, rate=rate, key=new_pseudonym_key(0))
        print(describe(dry_tally(steps), steps=steps, dry_run=True))
        return 0
    if bootstrap is None:
        raise UsageError("simulate needs a Kafka bootstrap (or --dry-run)")
    domain = trust.open_domain(home)
    registry = domain.registry(datetime.now(CHINA))

    def opener(participant: str) -> Client:
        return Client(
            keystore=domain.keystore(participant),
            registry=registry,
            bootstrap=bootstrap,
            outbox_path=home / "outbox" / f"{participant}.sqlite",
            topic_prefix=topic_prefix,
        )

    first = opener("police")  # police report in every run; its client asks for the pseudonyms
    steps = _generate_when_pseudonymizer_answers(
        lambda: generate(seed=seed, start=start, days=days, rate=rate, key=first.pseudonymizer)
    )
    print(
        f"simulating {days} day(s) from {start:%Y-%m-%d %H:%M} (seed {seed}, {rate:g} leads/day): "
        f"{len(steps)} events from {len({s.sender for s in steps})} senders",
        file=sys.stderr,
    )
    senders = {"police": first, **open_senders({s.sender for s in steps} - {"police"}, opener)}
    progress = Progress(total_bytes=len(steps), every=100, unit="events")
    tally = Tally()
    try:
        tally = play(steps, senders, start=start, speed=speed, progress=progress)
    finally:
        waiting = _close(senders)
        print(describe(tally, steps=steps))
        if waiting:
            print(f"  {waiting} event(s) wait in the senders' outboxes for Kafka; each goes on its next run")
    return 0


def _generate_when_pseudonymizer_answers(
    run: Callable[[], list[Step]], deadline_s: float = 90.0
) -> list[Step]:
    """``run()``, again while the pseudonymizer does not answer yet (``make run`` starts it beside the
    simulator), until ``deadline_s`` has passed."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return run()
        except PseudonymizerUnavailableError as e:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for the pseudonymizer ({e.code})", file=sys.stderr)
            time.sleep(min(2.0, e.retry_after))  # a retry within a deadline, as the error asks


def _close(senders: Mapping[str, Client], timeout: float = 60.0) -> int:
    """Flush every client (their outboxes drain in parallel), close them, and return how many
    events still wait."""
    deadline = time.monotonic() + timeout
    waiting = 0
    for client in senders.values():
        client.flush(max(0.1, deadline - time.monotonic()))
        waiting += client.outbox.depth()
        client.close()
    return waiting
