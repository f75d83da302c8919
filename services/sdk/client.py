"""The Python SDK: one participant's client for publishing events and reading its inbox.

    client = Client.open(participant="police", home=Path(".lianfang"), bootstrap="127.0.0.1:9092")
    lead_id = client.publish_lead({...})          # validated, pseudonymized, sealed, signed, spooled
    client.flush(timeout=30)                      # optional: wait until Kafka has it
    for opened in client.inbox(max_records=10):   # verified and opened; each finished event once
        ...

``publish`` returns once the sealed event is in the durable outbox (fsync'd); a background thread
sends it with acks=all and idempotence, through broker outages and restarts of this process.
``publish_lead`` also goes on through an outage of the pseudonymizer: the lead waits in the outbox,
encrypted to this participant's own key, and the background thread pseudonymizes, seals and sends it
once the service answers (:mod:`services.sdk.deferred`).
Each publish and each opened inbox event is also an entry of the client's own audit chain
(:mod:`services.audit.trail`), on disk before the call returns and shipped to ``lianfang.audit.v1``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from schemas.envelope import MAX_LINKS, EnvelopeHeader, SectionName
from schemas.events import (
    EVENT_MODELS,
    EventModel,
    LeadAcknowledged,
    LeadActionTaken,
    LeadReported,
    LeadResolved,
    split_sections,
)
from services import trust
from services.audit.chain import opened_object
from services.audit.kafka import KafkaSink
from services.audit.trail import participant_trail
from services.bus import registry_follower
from services.bus.deadletter import ProblemWriter, bug_on_record
from services.bus.freshness import FreshnessInForce
from services.bus.registry_follower import RegistryInForce
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.kernel import acls, envelope, topics
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import (
    LianfangError,
    MalformedError,
    ReasonCode,
    RegistryStaleError,
    TransportError,
    UsageError,
    validation_summary,
)
from services.kernel.keystore import Keystore
from services.kernel.pseudonym import (
    Pseudonymizer,
    PseudonymKey,
    canonical_unlinked,
    flag_identifiers,
    identify_person,
    pseudonym_epochs,
)
from services.kernel.registry import Registry
from services.pseudonymizer.client import ObliviousPseudonymizer, PseudonymizerUnavailableError
from services.sdk import deferred
from services.sdk import metrics as sdk_metrics
from services.sdk.metrics import SdkMetrics
from services.sdk.outbox import Deferred, Drainer, Outbox, Pending, Record, Resolved
from services.store.handed import HandedOut

log = logging.getLogger("lianfang.sdk")


URGENT_INDICATORS = frozenset({"weapon", "strangulation", "threats_to_kill"})


@dataclass(frozen=True, slots=True)
class CaseContext:
    """The clear-header facts of a case that follow-up events carry (from the lead they follow)."""

    subject: str
    category: str | None
    minor: bool | None
    town: str | None
    school_related: bool | None
    lead_id: str | None = None
    links: tuple[str, ...] = ()  # a lead's other pseudonyms of its victim (only a lead carries them)

    @classmethod
    def of(cls, header: EnvelopeHeader) -> CaseContext:
        return cls(
            subject=header.subject,
            category=header.category,
            minor=header.minor,
            town=header.town,
            school_related=header.school_related,
            lead_id=header.id,
        )


def default_urgency(lead: LeadReported) -> str:
    """immediate: a minor victim of sexual assault or abuse, or a lethal-risk indicator;
    urgent: domestic violence or sexual assault; routine: the rest."""
    if lead.minor and lead.category in ("sexual_assault", "child_abuse"):
        return "immediate"
    if URGENT_INDICATORS & set(lead.risk_indicators):
        return "immediate"
    if lead.category in ("domestic_violence", "sexual_assault", "trafficking", "child_abuse"):
        return "urgent"
    return "routine"


def person_canonical(person: Mapping[str, Any]) -> str:
    """The canonical identifier of a person given as a lead's ``victim`` or a suspect: its strongest
    valid identifier (:func:`~services.kernel.pseudonym.identify`), else an invalid one kept as given.
    Raises ``UsageError`` when there is neither."""
    subject = identify_person(person).subject
    if subject is None:
        raise UsageError(
            "no valid identifier: give a resident ID number, a phone number, or name and birth date"
        )
    return subject


def person_pseudonym(pseudonymizer: Pseudonymizer, person: Mapping[str, Any]) -> str:
    """The pseudonym of a person (see :func:`person_canonical`)."""
    return pseudonymizer.pseudonyms([person_canonical(person)])[0]


@dataclass(frozen=True, slots=True)
class LeadIdentities:
    """A lead with its identifiers flagged and its pseudonyms filled in, and ``links``: the pseudonyms of
    the victim's other valid identifiers and, during a pseudonymizer key transition, the victim's
    previous-epoch pseudonyms, for the clear header (the hub links the person's leads)."""

    data: dict[str, Any]
    links: tuple[str, ...]


def lead_identities(
    pseudonymizer: Pseudonymizer,
    data: Mapping[str, Any],
    *,
    token: str,
    metrics: SdkMetrics | None = None,
) -> LeadIdentities:
    """Flag each person's identifiers, then compute in one batch the victim's pseudonym and links and
    each identifiable suspect's pseudonym (a suspect pseudonym already given is kept).

    No identifier refuses the lead: an invalid one is flagged (``identifier_flags``) and counted in
    ``metrics`` by kind and reason, and the subject falls back to the next valid one; a victim with
    none at all gets a pseudonym of its own (:func:`canonical_unlinked` of ``token``, the event id).
    """
    out = dict(data)
    victim = out.get("victim")
    if not isinstance(victim, Mapping):
        raise UsageError("a lead needs a victim (at least a name, and an ID number, phone or birth date)")
    identified = identify_person(victim)
    out["victim"] = flag_identifiers(victim, identified)
    canonicals = [identified.subject or canonical_unlinked(token), *identified.links]
    problems = list(identified.problems)
    suspects: list[dict[str, Any]] = []
    identifiable: list[dict[str, Any]] = []
    for given in out.get("suspects") or []:
        if not isinstance(given, Mapping):
            suspects.append(given)  # the schema reports it
            continue
        of_suspect = identify_person(given)
        suspect = flag_identifiers(given, of_suspect)
        problems += [p for p in of_suspect.problems if p[0] != "subject"]  # a suspect may be unnamed
        if suspect.get("pseudonym") is None and of_suspect.subject is not None:
            canonicals.append(of_suspect.subject)
            identifiable.append(suspect)
        elif suspect.get("pseudonym") is None:
            suspect["pseudonym"] = None  # too little to identify: the suspect stays unlinked
        suspects.append(suspect)
    if metrics is not None:
        for kind, reason in problems:
            metrics.identifier_problems.labels(kind, reason).inc()
    epochs = pseudonym_epochs(pseudonymizer, canonicals)
    pseudonyms = [e.current for e in epochs]
    n_links = len(identified.links)
    out["victim_pseudonym"] = pseudonyms[0]
    for suspect, pseudonym in zip(identifiable, pseudonyms[1 + n_links :], strict=True):
        suspect["pseudonym"] = pseudonym
    out["suspects"] = suspects
    out["suspect_pseudonyms"] = [
        s["pseudonym"] for s in suspects if isinstance(s, Mapping) and s.get("pseudonym")
    ]
    # During a pseudonymizer key transition the victim's previous-epoch pseudonyms link too (decisions,
    # "Pseudonymizer key epochs"), the subject's own first: it carries the person's state over.
    victim = epochs[: 1 + n_links]
    candidates = [victim[0].previous, *pseudonyms[1 : 1 + n_links], *(e.previous for e in victim[1:])]
    links = tuple(dict.fromkeys(p for p in candidates if p is not None and p != pseudonyms[0]))
    return LeadIdentities(out, links[:MAX_LINKS])


@dataclass(frozen=True, slots=True)
class Sealed:
    """An event sealed and signed by :meth:`Client.seal_lead` or :meth:`Client.seal_event`, not yet
    stored: the outbox record, and what its audit entry and metrics name."""

    record: Record
    subject: str
    event_type: str


class Publisher(Protocol):
    """What code that only publishes needs of a :class:`Client` (importers, the simulator, fakes)."""

    def publish_lead(
        self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str | None = None
    ) -> str: ...

    def publish(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        audience: Sequence[str] = (),
        event_id: str | None = None,
    ) -> str: ...


INBOX_COMMIT_EVERY_S: Final = 1.0
"""How long an inbox reader may hold the offsets of events it is done with before committing them
(:meth:`Client.inbox`): a reader restarted after a crash reads up to that much again, and skips it."""

END_COMMIT_WAIT_S: Final = 5.0
"""How long the end of an inbox iteration waits for its last commit before giving it up (logged)."""


class OffsetsToCommit:
    """Per partition, the offset past the last inbox record a reader is done with (handed out and asked
    past, skipped as a copy, or reported unreadable), until they are taken to be committed; due once
    ``every_s`` has passed since the last take. Pure, over a clock."""

    def __init__(self, every_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._now = now
        self._next: dict[TopicPartition, int] = {}
        self._since = now()

    def past(self, topic: str, partition: int, offset: int) -> None:
        self._next[TopicPartition(topic, partition)] = offset + 1

    def due(self) -> bool:
        return bool(self._next) and self._now() - self._since >= self.every_s

    def take(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit (none: empty), forgotten here; the interval starts again."""
        taken = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._next.items()}
        self._next.clear()
        self._since = self._now()
        return taken


class Client:
    """One participant on the bus.

    ``security`` is how it logs in to Kafka: on a secured broker, as the participant's own principal
    (``User:<participant>``). ``None`` reads it from the ``LIANFANG_KAFKA_*`` environment.

    ``reader`` names this client's inbox reader when one participant reads its inbox from several
    programs (the console, ``lianfang inbox``, an agency's own application): each reader has its own
    consumer group ``lianfang-inbox-<participant>.<reader>`` (``None``: ``lianfang-inbox-<participant>``)
    and its own record of the event ids it handed out (``handed_path``; default beside the outbox), so
    no reader takes another's records.

    The outbox's gauges read this client's outbox when ``metrics`` is scraped, summed with the other
    clients reporting there; ``outbox_gauges=False`` leaves them to whoever owns ``metrics``.

    ``pseudonym_requests_in_flight``: how many requests the oblivious pseudonymizer client sends at once
    for this client's callers (1; an import, which asks for batches ahead, sets more);
    ``pseudonym_work``: where that client's arithmetic runs (an import gives it a process of its own, see
    :func:`services.pseudonymizer.client.work_process`; ``None``: in the caller's thread).
    """

    def __init__(
        self,
        *,
        keystore: Keystore,
        registry: Registry | RegistryInForce,
        bootstrap: str,
        outbox_path: Path,
        topic_prefix: str = "",
        clock: Clock | None = None,
        metrics: SdkMetrics | None = None,
        start: bool = True,
        security: KafkaSecuritySettings | None = None,
        audit_dir: Path | None = None,
        reader: str | None = None,
        handed_path: Path | None = None,
        follow: bool = False,
        pseudonymizer: Pseudonymizer | None = None,
        require_freshness: bool = True,
        outbox_gauges: bool = True,
        inbox_commit_every_s: float = INBOX_COMMIT_EVERY_S,
        pseudonym_requests_in_flight: int = 1,
        pseudonym_work: futures.Executor | None = None,
    ) -> None:
        if reader is not None and not reader.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"a reader name is letters, digits, '-' and '_', not {reader!r}")
        self.keys = keystore
        self.reader = reader
        self.handed_path = handed_path or outbox_path.with_name(
            f"{outbox_path.stem}.inbox-{reader or 'sdk'}.handed.sqlite"
        )
        self._handed: HandedOut | None = None
        self._id_writer: futures.ThreadPoolExecutor | None = None
        self._problems: ProblemWriter | None = None
        # The event inbox() handed out last, until the caller asks for the next (refuse() reports it).
        self._in_hand: tuple[envelope.Opened, Any, KafkaConsumer] | None = None
        self.participant = keystore.participant
        self.in_force = registry_follower.in_force(registry)
        self.bootstrap = bootstrap
        self.names = topics.TopicNames(topic_prefix)
        self.clock = clock or utcnow
        self.metrics = metrics or sdk_metrics.shared()
        self.security = security if security is not None else load_security()
        self.outbox = Outbox(outbox_path)
        self.drainer = Drainer(
            self.outbox, bootstrap, on_sent=self._sent, security=self.security, resolve=self._resolve_waiting
        )
        self._told_waiting = False
        self._waiting_code: str | None = None  # the pseudonymizer's last refusal while leads wait
        # The outbox gauges read this outbox when scraped (four queries), summed with the other clients'
        # that report to ``metrics``, not after each publish and each batch sent. False: whoever owns
        # ``metrics`` computes them.
        if outbox_gauges:
            self.metrics.watch_outbox(self.outbox)
        self._pseudonym_key: PseudonymKey | None = None
        self._pseudonymizer = pseudonymizer
        self._oblivious: ObliviousPseudonymizer | None = None
        self._pseudonym_requests = pseudonym_requests_in_flight  # the oblivious client's, when made
        self._pseudonym_work = pseudonym_work
        self._consumer: KafkaConsumer | None = None
        self.inbox_commit_every_s = inbox_commit_every_s
        self._told_not_fresh = False
        # Every publish and every opened event is an entry of this client's audit chain (on disk
        # before the call returns; shipped to the audit topic in the background once started).
        sink = KafkaSink(bootstrap, self.names.audit, self.security) if start and bootstrap else None
        self.trail = participant_trail(
            audit_dir or outbox_path.parent / "audit",
            keystore,
            self.in_force.current,
            "sdk",
            ship=sink,
            clock=self.clock,
            metrics=self.metrics.audit,
        )
        if start:
            self.drainer.start()
        # ``follow``: this client keeps its registry current itself, in a thread of its own (a
        # long-lived client must see new keys and revocations; see services.bus.registry_follower).
        # A registry in force shared with others (the gateway's) is followed by its owner.
        # Such a client also keeps the timestamp statements it reads there: its inbox reader reads
        # only while one says the registry is fresh (``require_freshness``; see :meth:`inbox`).
        following = follow and start and bool(bootstrap)
        self.freshness = (
            FreshnessInForce(self.in_force, required=require_freshness, metrics=self.metrics.freshness)
            if following
            else None
        )
        self.follower = (
            registry_follower.follow(
                self.in_force,
                bootstrap=bootstrap,
                topic=self.names.registry,
                security=self.security,
                catch_up_s=3.0,  # short: publishing into the outbox must not wait long for Kafka
                on_statement=self.freshness.offer if self.freshness is not None else None,
            )
            if following
            else None
        )

    @classmethod
    def open(
        cls, *, participant: str, home: Path, bootstrap: str, outbox_path: Path | None = None, **kwargs: Any
    ) -> Client:
        """A client from a trust-domain folder: the participant's keystore and the verified registry,
        kept current from the registry topic while the client is open (unless ``start=False``).
        Its inbox reader requires a fresh timestamp statement unless ``require_freshness=False`` (or
        ``LIANFANG_SDK_REQUIRE_FRESHNESS=false``, only where no timestamp service runs)."""
        kwargs.setdefault(
            "require_freshness", os.environ.get("LIANFANG_SDK_REQUIRE_FRESHNESS", "true").lower() != "false"
        )
        domain = trust.open_domain(home)
        metrics: SdkMetrics = kwargs.pop("metrics", None) or sdk_metrics.shared()
        in_force = RegistryInForce.from_domain(
            domain,
            service="sdk",
            metrics=metrics.registry_in_force,
            registry_topic=topics.TopicNames(kwargs.get("topic_prefix", "")).registry,
            participant=participant,
        )
        return cls(
            keystore=domain.keystore(participant),
            registry=in_force,
            bootstrap=bootstrap,
            outbox_path=outbox_path or home / "outbox" / f"{participant}.sqlite",
            metrics=metrics,
            follow=True,
            **kwargs,
        )

    @property
    def registry(self) -> Registry:
        """The registry in force now."""
        return self.in_force.current

    # -- publishing

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        """What computes this client's pseudonyms: the one given, else the oblivious pseudonymizer the
        registry in force names, else (an older domain) the pseudonym key the registry seals to us."""
        if self._pseudonymizer is not None:
            return self._pseudonymizer
        registry = self.registry
        if registry.document.pseudonym_key is None:
            self._pseudonym_key = None  # a domain that moved to the pseudonymizer: the old key goes
        if registry.pseudonymizer is not None:
            if self._oblivious is None:
                self._oblivious = ObliviousPseudonymizer(
                    keystore=self.keys,
                    registry=lambda: self.registry,
                    clock=self.clock,
                    in_flight=self._pseudonym_requests,
                    work=self._pseudonym_work,
                )
            return self._oblivious
        return self.pseudonym_key

    @property
    def pseudonym_key(self) -> PseudonymKey:
        """The sealed pseudonym key of an older domain (``UsageError`` where a pseudonymizer is named)."""
        registry = self.registry
        sealed = registry.document.pseudonym_key
        key = self._pseudonym_key
        if key is None or sealed is None or key.version != sealed.version:
            key = self._pseudonym_key = registry.pseudonym_key(self.participant, self.keys.encryption)
        return key

    def publish_lead(
        self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str | None = None
    ) -> str:
        """Validate a lead given without pseudonyms (they are computed here), then publish it.

        Where the registry names a pseudonymizer, this asks it. While the service is away or busy (no
        answer, 5xx, 429), or while earlier leads still wait for it, the lead is accepted all the same:
        it is validated with stand-in pseudonyms and waits in the outbox, encrypted to this participant's
        own key, until the background thread can pseudonymize, seal and send it (:meth:`defer_lead`).
        A refusal of this caller (401, 403) or an answer that does not verify still raises.
        """
        event_id = event_id or envelope.new_event_id()
        if not self.outbox.waiting():
            try:
                lead, context = self._lead(data, self.pseudonymizer, token=event_id, metrics=self.metrics)
            except PseudonymizerUnavailableError as e:
                if not e.transient:
                    raise
                self._waiting_code = e.code
                return self.defer_lead(data, urgency=urgency, event_id=event_id, why=e.code, counted=True)
            return self.publish(
                lead, context=context, urgency=urgency or default_urgency(lead), event_id=event_id
            )
        return self.defer_lead(data, urgency=urgency, event_id=event_id)

    def leads_waiting(self) -> int:
        """How many leads wait in the outbox for the pseudonymizer."""
        return self.outbox.waiting()

    def waiting_status(self) -> str:
        """Why leads wait, for a person (an import's progress line): empty when none does, else how many,
        the pseudonymizer's last refusal (``rate_limited``, ``unreachable``, ...) and, while it
        rate-limits this participant, when this client asks it next."""
        waiting = self.outbox.waiting()
        if not waiting:
            return ""
        why = [self._waiting_code] if self._waiting_code else []
        asker = self._pseudonymizer or self._oblivious
        quiet = asker.rate_limited_for() if isinstance(asker, ObliviousPseudonymizer) else 0.0
        if quiet > 0:
            why.append(f"next request in {math.ceil(quiet)} s")
        return f"{waiting:,} lead(s) wait for the pseudonymizer" + (f" ({', '.join(why)})" if why else "")

    def _lead(
        self,
        data: Mapping[str, Any],
        pseudonymizer: Pseudonymizer,
        *,
        token: str,
        metrics: SdkMetrics | None = None,
    ) -> tuple[LeadReported, CaseContext]:
        """The lead with its pseudonyms from ``pseudonymizer``, validated, and its case context
        (``token``: the event id, for a victim without any identifier; ``metrics`` counts identifier
        problems, once a lead)."""
        identities = lead_identities(pseudonymizer, data, token=token, metrics=metrics)
        try:
            lead = LeadReported.model_validate_json(json.dumps(identities.data, default=str))
        except ValidationError as e:
            raise MalformedError(validation_summary(e, whole="(event)")) from e
        context = CaseContext(
            subject=lead.victim_pseudonym,
            category=lead.category,
            minor=lead.minor,
            town=lead.town,
            school_related=lead.school_related,
            links=identities.links,
        )
        return lead, context

    def defer_lead(
        self,
        data: Mapping[str, Any],
        *,
        urgency: str | None = None,
        event_id: str | None = None,
        refs: Sequence[str] = (),
        registry: Registry | None = None,
        why: str = "earlier leads wait",
        counted: bool = False,
    ) -> str:
        """Accept a lead whose pseudonyms cannot be had now; return its event id once it is on disk.
        ``why`` (the service's problem code, or ``unreachable``) goes into the log line said when leads
        start waiting; ``counted``: the lead's identifier problems were counted already (a first try).

        Everything but the pseudonyms is checked first, as :meth:`publish_lead` would (the fields, the
        right to publish, the recipients' keys: a trial seal under stand-in pseudonyms, thrown away).
        The lead is then stored encrypted to this participant's own key and later pseudonymized,
        sealed and signed under the registry in force *then*, in the order leads were accepted.
        """
        registry = registry or self.registry
        role = registry.pseudonymizer
        if role is None:
            raise UsageError(f"registry v{registry.version} names no pseudonymizer: nothing to wait for")
        event_id = event_id or envelope.new_event_id()
        pending = deferred.PendingLead.of(data, urgency=urgency, refs=refs)
        lead, context = self._lead(
            pending.data,
            deferred.StandIn(role.version),
            token=event_id,
            metrics=None if counted else self.metrics,
        )
        self._seal(lead, context=context, urgency=pending.urgency or default_urgency(lead), refs=refs,
                   event_id=event_id, registry=registry)  # fmt: skip
        return self._put_waiting(pending, event_id=event_id, registry=registry, why=why)

    def defer_event(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        event_id: str | None = None,
        persons: Mapping[str, str] | None = None,
        registry: Registry | None = None,
    ) -> str:
        """Accept an event to wait in the outbox behind the leads that wait there (an import's follow-up
        of a waiting lead, or a protection order during an outage); return its event id once on disk.

        ``persons`` maps each stand-in pseudonym in the event or its context (from a
        :class:`~services.sdk.deferred.Recording`) to its person's canonical identifier: each is
        replaced by the real pseudonym when the event is sealed. The event is checked as
        :meth:`publish` would (a trial seal, thrown away) and stored encrypted as a waiting lead is.
        """
        registry = registry or self.registry
        event_id = event_id or envelope.new_event_id()
        self._seal(event, context=context, urgency=urgency, refs=refs, event_id=event_id, registry=registry)
        event_json = json.loads(event.model_dump_json())
        context_json = dataclasses.asdict(context)
        used = json.dumps([event_json, context_json])
        pending = deferred.PendingEvent(
            type=event.EVENT_TYPE,
            event=event_json,
            context=context_json,
            urgency=urgency,
            refs=tuple(refs),
            persons={s: c for s, c in (persons or {}).items() if s in used},
        )
        return self._put_waiting(pending, event_id=event_id, registry=registry, why="behind waiting leads")

    def _put_waiting(self, pending: deferred.Pending, *, event_id: str, registry: Registry, why: str) -> str:
        kid, public = deferred.own_key(self.keys, registry, self.clock())
        sealed = deferred.seal_pending(
            pending, participant=self.participant, event_id=event_id, kid=kid, public=public
        )
        self.outbox.put_deferred(event_id=event_id, kid=kid, sealed=sealed)
        self._starts_waiting(why)
        self.metrics.deferred.inc()
        return event_id

    def _starts_waiting(self, code: str) -> None:
        if not self._told_waiting:
            self._told_waiting = True
            log.warning(
                "%s: leads are accepted and wait in the outbox, encrypted, until the pseudonymizer answers "
                "(%s)",
                self.participant, code,
            )  # fmt: skip

    def _resolve_waiting(self, rows: list[Deferred]) -> int:
        """Pseudonymize (one request for the whole batch), seal and sign waiting leads, and swap them
        for their sealed records; how many. A lead that cannot be opened, validated or sealed stays
        waiting, counted and logged by event id; while the service is away this raises."""
        registry = self.registry
        role = registry.pseudonymizer
        if role is None:
            self._waiting_failed(len(rows), "refused", f"registry v{registry.version} names no pseudonymizer")
            return 0
        recorder = deferred.Recording(role.version)
        opened = self._open_waiting(rows, recorder)
        if not opened:
            return 0
        asked = list(recorder.asked)
        try:
            known = deferred.Prefetched(dict(zip(asked, self.pseudonymizer.pseudonyms(asked), strict=True)))
        except PseudonymizerUnavailableError as e:
            self.metrics.waiting_failures.labels("unavailable" if e.transient else "refused").inc()
            self._waiting_code = e.code
            raise
        except LianfangError as e:
            self._waiting_failed(len(opened), "refused", f"the pseudonymizer's answer: {_why(e)}")
            return 0
        done: list[tuple[Resolved, EnvelopeHeader, str]] = []
        for row, pending in opened:
            try:
                event, context, urgency = self._waited(pending, known, token=row.event_id)
                header, record = self._seal(
                    event, context=context, urgency=urgency, refs=pending.refs, event_id=row.event_id,
                    registry=registry,
                )  # fmt: skip
            except LianfangError as e:
                self._waiting_failed(1, "refused", f"event {row.event_id}: {_why(e)}")
                continue
            resolved = Resolved(row, self.names.events, record.key, record.value, record.headers)
            done.append((resolved, header, event.EVENT_TYPE))
        if not done:
            return 0
        self.outbox.resolve([r for r, _, _ in done])
        for _, header, event_type in done:
            self.trail.append("publish", subject=header.subject, object=header.id)
            self.metrics.accepted.labels(event_type).inc()
        left = self.outbox.waiting()
        log.info(
            "%s: %d event(s) that waited for pseudonyms are sealed and queued for Kafka; %d still wait",
            self.participant, len(done), left,
        )  # fmt: skip
        if not left:
            self._told_waiting = False
            self._waiting_code = None
        return len(done)

    def _open_waiting(
        self, rows: list[Deferred], recorder: deferred.Recording
    ) -> list[tuple[Deferred, deferred.Pending]]:
        """The rows that open and validate, with what waited in each; ``recorder`` notes the
        identifiers they need."""
        opened: list[tuple[Deferred, deferred.Pending]] = []
        for row in rows:
            try:
                pending = deferred.open_pending(
                    row.sealed, keystore=self.keys, event_id=row.event_id, kid=row.kid
                )
                if isinstance(pending, deferred.PendingLead):
                    self._lead(pending.data, recorder, token=row.event_id)
                else:
                    recorder.pseudonyms(list(pending.persons.values()))
            except LianfangError as e:
                self._waiting_failed(1, "invalid", f"event {row.event_id}: {_why(e)}")
                continue
            opened.append((row, pending))
        return opened

    def _waited(
        self, pending: deferred.Pending, known: deferred.Prefetched, *, token: str
    ) -> tuple[EventModel, CaseContext, str]:
        """What waited, with its pseudonyms: the event, its case context and its urgency."""
        if isinstance(pending, deferred.PendingLead):
            lead, context = self._lead(pending.data, known, token=token)
            return lead, context, pending.urgency or default_urgency(lead)
        model = EVENT_MODELS.get(pending.type)
        if model is None:
            raise MalformedError(f"no event type {pending.type!r} in the catalogue")
        event_json, context_json = pending.filled(known.known)
        try:
            event = model.model_validate_json(json.dumps(event_json))
            context = CaseContext(**{**context_json, "links": tuple(context_json.get("links") or ())})
        except (ValidationError, TypeError) as e:
            raise MalformedError(f"the waiting {pending.type} no longer validates") from e
        return event, context, pending.urgency

    def _waiting_failed(self, count: int, reason: str, detail: str) -> None:
        """A waiting lead that cannot be sent yet for a reason waiting alone will not cure: it stays in
        the outbox (nothing accepted is dropped), counted and logged without content."""
        self.metrics.waiting_failures.labels(reason).inc(count)
        log.error(
            "%s: %d waiting lead(s) stay in the outbox (%s); %s", self.participant, count, reason, detail
        )

    # -- publishing a batch: seal each event now, store them all with one commit

    def seal_lead(self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str) -> Sealed:
        """What :meth:`publish_lead` would store, sealed and signed, nothing stored (see :meth:`put_sealed`).
        Raises :class:`PseudonymizerUnavailableError` where :meth:`publish_lead` would let the lead wait;
        while leads wait (:meth:`leads_waiting`) it must not be used: the caller publishes such a lead
        with :meth:`publish_lead` instead, so that it waits behind them."""
        lead, context = self._lead(data, self.pseudonymizer, token=event_id, metrics=self.metrics)
        urgency = urgency or default_urgency(lead)
        return self.seal_event(lead, context=context, urgency=urgency, event_id=event_id)

    def seal_event(
        self, event: EventModel, *, context: CaseContext, urgency: str = "routine", event_id: str
    ) -> Sealed:
        """What :meth:`publish` would store, sealed and signed, nothing stored (see :meth:`put_sealed`)."""
        header, record = self._seal(event, context=context, urgency=urgency, event_id=event_id)
        return Sealed(
            Record(event_id=header.id, topic=self.names.events, key=record.key, value=record.value,
                   headers=record.headers),
            subject=header.subject,
            event_type=event.EVENT_TYPE,
        )  # fmt: skip

    def put_sealed(self, batch: Sequence[Sealed]) -> list[bool]:
        """Store sealed events in the outbox with one commit and their audit entries with one fsync; return
        once all are on disk, for each True (accepted, as by :meth:`publish`) or False (its event id was
        accepted before with other content, where :meth:`publish` raises :class:`ConflictError`)."""
        outcomes = self.outbox.put_many([s.record for s in batch])
        for sealed, outcome in zip(batch, outcomes, strict=True):
            if outcome != "conflict":
                self.trail.append("publish", subject=sealed.subject, object=sealed.record.event_id,
                                  durable=False)  # fmt: skip
                self.metrics.accepted.labels(sealed.event_type).inc()
        self.trail.sync()
        return [outcome != "conflict" for outcome in outcomes]

    def publish(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        audience: Sequence[str] = (),
        event_id: str | None = None,
        registry: Registry | None = None,
    ) -> str:
        """Seal ``event`` to the recipients the policy names, sign it, and put it in the outbox.

        Returns the event id once the record is on disk. ``context`` gives the clear-header facts
        (subject pseudonym, category, minor, town) — for a follow-up, :meth:`CaseContext.of` the lead.
        """
        header, record = self._seal(
            event, context=context, urgency=urgency, refs=refs, audience=audience, event_id=event_id,
            registry=registry,
        )  # fmt: skip
        self.outbox.put(
            event_id=header.id,
            topic=self.names.events,
            key=record.key,
            value=record.value,
            headers=record.headers,
        )
        self.trail.append("publish", subject=header.subject, object=header.id)
        self.metrics.accepted.labels(event.EVENT_TYPE).inc()
        return header.id

    def _seal(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str,
        refs: Sequence[str] = (),
        audience: Sequence[str] = (),
        event_id: str | None = None,
        registry: Registry | None = None,
    ) -> tuple[EnvelopeHeader, envelope.SealedRecord]:
        """The header and the sealed, signed record of ``event`` (nothing stored)."""
        now = self.clock()
        # One registry for the header, the checks and the sealing: the one in force, or the one the
        # caller checked its request against (the gateway).
        registry = registry or self.registry
        refs = [*refs, *([context.lead_id] if context.lead_id and context.lead_id not in refs else [])]
        header = envelope.build_header(
            event_id=event_id or envelope.new_event_id(),
            sender=self.participant,
            event_type=event.EVENT_TYPE,
            schema_version=getattr(event, "schema_version", 1),
            at=now,
            subject=context.subject,
            category=context.category,
            minor=context.minor,
            school_related=context.school_related,
            town=context.town,
            urgency=urgency,
            audience=audience,
            refs=refs,
            links=context.links,
            registry=registry,
        )
        registry.check_may_publish(self.participant, event.EVENT_TYPE)
        triage, details = split_sections(event)
        content: dict[SectionName, dict[str, Any]] = {"triage": triage, "details": details}
        return header, envelope.seal(header, content, registry=registry, signer=self.keys)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until Kafka has acknowledged everything published so far (True) or ``timeout`` passes.

        Leads waiting for their pseudonyms count: during an outage of the pseudonymizer this returns
        False after ``timeout`` (they stay in the outbox and are sent once it answers)."""
        done = self.drainer.wait_empty(timeout)
        return done

    def _sent(self, records: list[Pending]) -> None:
        now = time.time()
        for r in records:
            self.metrics.published.inc()
            self.metrics.spool_seconds.observe(max(0.0, now - r.accepted))

    # -- the inbox

    def inbox(
        self, *, max_records: int | None = None, timeout: float = 5.0, follow: bool = False
    ) -> Iterator[envelope.Opened]:
        """Verified and opened events addressed to this participant, oldest first, each event id once
        (again only the one a crash, a ``break`` or an exception interrupted).

        The id of an event is remembered (on disk) once the caller is done with it: when it asks for
        the next one (written in a thread of the client's from that moment, while the next one is read
        and its opening audited, and on disk before that one is handed out), or the reading ends at
        ``max_records``; that record, not the consumer group's
        offset, is what hands each event out once. So an event the caller was still handling when
        its process died (a crash, a kill, a power cut) is handed out again at the next start, under
        the same event id, for the caller to recognize if it had finished its part: nothing accepted
        is lost to a crash. The offsets of the events the caller is done with are committed together,
        at most ``inbox_commit_every_s`` apart, when the inbox has nothing more to read, and when the
        iteration ends: a commit is a round trip to the group coordinator (about 7 ms on Kafka 4.1,
        which holds a commit up to 5 ms to batch it), so committing after each event would cap a reader
        near 130 events a second. A
        copy of an event the caller finished (Kafka's re-delivery after a crash before the commit, or a
        second copy in the inbox) is skipped and counted. Stopping the iteration early (``break``, or an
        exception in the caller's loop) leaves the last event unfinished: it is read again next time.
        One process reads a reader's group (``reader``): another process of the same group would have
        another record of the ids it handed out.
        A record this participant cannot open (bad signature, unknown key, a section it cannot
        decrypt) is never handed to the caller: it is counted by reason, logged without content, and
        reported by a problem record on the dead-letter topic, written before its offset is committed;
        then reading goes on. An expired registry stops the reading with
        :class:`RegistryExpiredError` and commits nothing past the record it met, which the next
        reading (of this client too) meets again: a newer registry is needed first. So does a failure of
        the disk (the audit file, the record of ids) or of Kafka before the event is handed out; a bug
        met opening a record is reported as ``internal`` and passed.

        A client that follows the registry topic (:meth:`open`) reads nothing while it holds no fresh
        timestamp statement for its registry (a withheld revocation would go unnoticed): it waits,
        fetching and committing nothing, logs why and counts itself in
        ``lianfang_inbox_waiting_for_freshness``. With ``follow`` it waits until a statement arrives;
        otherwise for at most ``timeout`` s, then raises :class:`RegistryStaleError` (a
        ``TransportError``: retry later; every record is still in the inbox).
        """
        consumer = self._inbox_consumer()
        handed = self._handed_out()
        done = OffsetsToCommit(self.inbox_commit_every_s)
        seen = 0
        idle_deadline = time.monotonic() + timeout
        # The event the caller finished (it asked for the next), its id being written in a thread of the
        # client's from that moment: meanwhile the next event is read, opened and its audit line put on
        # disk (two files, two fsyncs at once). The write is awaited before the next event is handed
        # out and before any offset past it is committed.
        finished: Finished | None = None
        try:
            while max_records is None or seen < max_records:
                if not self._fresh_to_read(None if follow else idle_deadline):
                    idle_deadline = time.monotonic() + timeout  # the caller's timeout, from freshness on
                batch = consumer.poll(timeout_ms=500, max_records=1)
                if not batch:
                    _settle(consumer, finished, done)
                    finished = None
                    self._commit(consumer, done)  # nothing more to read for now: what is done, at once
                    if not follow and time.monotonic() > idle_deadline:
                        return
                    continue
                idle_deadline = time.monotonic() + timeout
                for records in batch.values():
                    for record in records:
                        try:
                            opened = self._to_hand_out(consumer, handed, record, finished)
                        except BaseException:
                            # An expired registry, a disk that fails: not handed out, not committed;
                            # the consumer's own position would pass it by in a next reading.
                            _rewind(consumer, record)
                            raise
                        if opened is None:  # reported as unreadable, or finished before: skipped
                            _settle(consumer, finished, done)
                            finished = None
                            done.past(record.topic, record.partition, record.offset)
                            continue
                        self._audited(consumer, finished, done, record)
                        finished = None
                        yield from self._hand_out(opened, record, consumer)
                        finished = Finished(opened, record, self._writer().submit(
                            handed.remember, opened.header.id, record.partition, record.offset
                        ))  # the caller asked for the next  # fmt: skip
                        seen += 1
                        if done.due():  # no record in hand or read ahead: a failure skips nothing
                            self._commit(consumer, done)
            _settle(consumer, finished, done)
            finished = None
        except KafkaError as e:
            raise TransportError(f"reading the inbox of {self.participant} failed: {e}") from e
        finally:
            # Leaving on a failure: the finished event's id, if the disk took it (else that event was
            # put back, to be handed out again).
            with contextlib.suppress(Exception):
                _settle(consumer, finished, done)
            self._commit(consumer, done, wait_s=END_COMMIT_WAIT_S, best_effort=True)

    def _audited(
        self, consumer: KafkaConsumer, finished: Finished | None, done: OffsetsToCommit, record: Any
    ) -> None:
        """The audit line of the event about to be handed out (``record``'s) on disk, and the finished
        event's id (its write in flight since the caller asked for the next, :func:`_settle`). If either
        fails, ``record`` is put back too, not handed out, and the failure raised."""
        try:
            self.trail.sync()
        except BaseException:
            _rewind(consumer, record)
            with contextlib.suppress(Exception):
                _settle(consumer, finished, done)
            raise
        try:
            _settle(consumer, finished, done)
        except BaseException:
            _rewind(consumer, record)
            if finished is not None:
                _rewind(consumer, finished.record)  # last: the earlier of the two in one partition
            raise

    def _writer(self) -> futures.ThreadPoolExecutor:
        """The thread :meth:`inbox` writes a finished event's id in while it reads the next."""
        if self._id_writer is None:
            self._id_writer = futures.ThreadPoolExecutor(1, thread_name_prefix="lianfang-inbox-ids")
        return self._id_writer

    def _to_hand_out(
        self, consumer: KafkaConsumer, handed: HandedOut, record: Any, finished: Finished | None = None
    ) -> envelope.Opened | None:
        """The opened event of an inbox record, its opening's audit entry written (on disk once the
        trail is synced); ``None`` when it is skipped: a record this participant cannot open (counted
        and reported, :meth:`_report_unreadable`), or an event the caller finished before (counted;
        ``finished``: one whose id is not written yet). An expired registry raises: not the record's
        fault; nor is the disk's or Kafka's failure. A bug met while opening it is the record's: it is
        reported as ``internal`` and passed (met again and again, it would stop the reader there)."""
        try:
            result = registry_follower.open_or_unreadable(
                record.value,
                in_force=self.in_force,
                newer_registry=self._newer_registry,
                now=self.clock,
                keystore=self.keys,
                headers=record.headers,
            )
        except (LianfangError, KafkaError, OSError):
            raise
        except Exception as e:
            result = bug_on_record(log, f"inbox {self.participant}", "opening", record, e)
        if isinstance(result, envelope.Unreadable):
            self._report_unreadable(consumer, result, record)
            return None
        if handed.first(result.header.id) is not None or (
            finished is not None and finished.opened.header.id == result.header.id
        ):
            self.metrics.duplicates_skipped.inc()
            log.info("inbox event %s at offset %d was handed out before: skipped",
                     result.header.id, record.offset)  # fmt: skip
            return None
        self.metrics.received.labels(result.header.type).inc()
        self.trail.append(
            "open_section", subject=result.header.subject, object=opened_object(result), durable=False
        )
        return result

    def _hand_out(
        self, opened: envelope.Opened, record: Any, consumer: KafkaConsumer
    ) -> Iterator[envelope.Opened]:
        """Hand ``opened`` to the caller, in hand for :meth:`refuse` until it asks for the next. A caller
        that stops first leaves it unfinished: not committed, the consumer put back on it, read again."""
        mine = self._in_hand = (opened, record, consumer)
        try:
            yield opened
        except GeneratorExit:
            _rewind(consumer, record)
            raise
        finally:
            if self._in_hand is mine:  # another reading of this client may hold one since
                self._in_hand = None

    def refuse(self, opened: envelope.Opened, reason: ReasonCode, detail: str) -> None:
        """Report the event :meth:`inbox` handed out last, which the caller cannot use (its sections do
        not match its schema, say), as a record this participant cannot open is reported: counted in
        ``lianfang_inbox_rejected_total`` by ``reason``, logged without content and reported by a
        problem record on the dead-letter topic (``detail``: a line that quotes nothing of it). Call it
        before asking for the next event; the event is then finished like any other."""
        in_hand = self._in_hand
        if in_hand is None or in_hand[0] is not opened:
            raise UsageError(
                "refuse() reports the event inbox() handed out last, before the next is asked for"
            )
        _opened, record, consumer = in_hand
        self._report_unreadable(consumer, envelope.Unreadable(reason, detail, opened.header), record)

    def _commit(
        self,
        consumer: KafkaConsumer,
        done: OffsetsToCommit,
        *,
        wait_s: float | None = None,
        best_effort: bool = False,
    ) -> None:
        """Commit the offsets past the events ``done`` holds, if any. ``best_effort`` (the iteration
        ends): a failure is logged, not raised; those events are read again next time, and skipped as
        handed out before."""
        offsets = done.take()
        if not offsets:
            return
        try:
            consumer.commit(offsets, timeout_ms=None if wait_s is None else int(wait_s * 1000))
        except (KafkaError, AssertionError, RuntimeError) as e:  # the last two: a consumer closed meanwhile
            if not best_effort:
                raise
            log.warning(
                "inbox %s: offsets of %d partition(s) not committed (%s); their events are read again "
                "next time and skipped as handed out",
                self.participant, len(offsets), e,
            )  # fmt: skip

    def _fresh_to_read(self, until: float | None) -> bool:
        """Whether the inbox may be read at once (True), or only after a wait for a fresh timestamp
        statement (False); raise :class:`RegistryStaleError` if none came by ``until`` (monotonic;
        ``None``: wait for as long as it takes)."""
        freshness = self.freshness
        if freshness is None or freshness.ok():
            return True
        status = freshness.status()
        if not self._told_not_fresh:  # once per wait, however often the caller retries
            self._told_not_fresh = True
            log.warning(
                "inbox %s: not read while registry v%d is not known to be fresh (%s); waiting for a "
                "fresh timestamp statement on %s",
                self.participant, self.registry.version, status.state, self.names.registry,
            )  # fmt: skip
        self.metrics.inbox_waiting.inc()
        try:
            if until is None:
                while not freshness.wait_ok(60.0):
                    pass
            elif not freshness.wait_ok(max(0.0, until - time.monotonic())):
                status = freshness.status()
                raise RegistryStaleError(
                    f"the inbox of {self.participant} was not read: registry v{self.registry.version} is "
                    f"not known to be fresh ({status.state}: {status.detail}); retry once a fresh "
                    f"timestamp statement is on {self.names.registry}",
                    state=status.state,
                )
        finally:
            self.metrics.inbox_waiting.dec()
        self._told_not_fresh = False
        log.info("inbox %s: registry v%d is fresh: reading", self.participant, self.registry.version)
        return False

    def _report_unreadable(self, consumer: KafkaConsumer, problem: envelope.Unreadable, record: Any) -> None:
        """Count, log (no content) and write the problem record; if it cannot be written, rewind so
        that the record is met again, and raise :class:`TransportError`."""
        handed = self._handed_out()
        if handed.reported(record.partition, record.offset):  # re-delivered after its problem record
            return
        self.metrics.inbox_rejected.labels(problem.reason).inc()
        log.warning(
            "inbox %s: the record at %s[%d]@%d cannot be opened (%s; event %s from %s); "
            "reported on the dead-letter topic",
            self.participant, record.topic, record.partition, record.offset, problem.reason,
            problem.header.id if problem.header else "-", problem.header.sender if problem.header else "-",
        )  # fmt: skip
        if self._problems is None:
            self._problems = ProblemWriter(
                bootstrap=self.bootstrap,
                topic=self.names.deadletter,
                reader=f"{self.participant}/{self.reader or 'sdk'}",
                security=self.security,
                clock=self.clock,
            )
        try:
            self._problems.write(problem, record)
        except TransportError:
            _rewind(consumer, record)
            raise
        handed.remember_reported(record.partition, record.offset)

    def _handed_out(self) -> HandedOut:
        if self._handed is None:
            self._handed = HandedOut(self.handed_path)
        return self._handed

    @property
    def inbox_group(self) -> str:
        """This reader's consumer group, within the ``lianfang-inbox-<participant>`` ACL prefix."""
        group = acls.participant_group(self.participant, self.names)
        return group if self.reader is None else f"{group}.{self.reader}"

    def _newer_registry(self, reason: ReasonCode) -> bool:
        return self.follower is not None and self.follower.newer_registry_for(reason)

    def _inbox_consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                self.names.inbox(self.participant),
                bootstrap_servers=self.bootstrap,
                group_id=self.inbox_group,
                client_id=f"lianfang-sdk-{self.participant}",
                isolation_level="read_committed",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **kafka_python_kwargs(self.security),
            )
        return self._consumer

    # -- follow-ups

    def acknowledge(self, lead: envelope.Opened, *, at: datetime | None = None) -> str:
        """受理: this agency has taken the lead on."""
        event = LeadAcknowledged.model_validate_json(
            json.dumps(
                {
                    "lead_id": lead.header.id,
                    "agency": self.participant,
                    "acknowledged_at": _iso(at or self.clock()),
                }
            )
        )
        return self.publish(event, context=CaseContext.of(lead.header), urgency=lead.header.urgency)

    def action_taken(
        self, lead: envelope.Opened, action: str, *, note: str | None = None, at: datetime | None = None
    ) -> str:
        """处置: an action on the lead (warning letter, legal aid, ...)."""
        data: dict[str, Any] = {
            "lead_id": lead.header.id,
            "action": action,
            "taken_at": _iso(at or self.clock()),
        }
        if note is not None:
            data["note"] = note
        event = LeadActionTaken.model_validate_json(json.dumps(data))
        return self.publish(event, context=CaseContext.of(lead.header), urgency=lead.header.urgency)

    def resolve(
        self,
        lead: envelope.Opened,
        *,
        outcome: str,
        satisfaction: str,
        feedback: str | None = None,
        at: datetime | None = None,
    ) -> str:
        """办结 with the victim's satisfaction feedback (满意率)."""
        data: dict[str, Any] = {
            "lead_id": lead.header.id,
            "outcome": outcome,
            "resolved_at": _iso(at or self.clock()),
            "satisfaction": satisfaction,
        }
        if feedback is not None:
            data["feedback"] = feedback
        event = LeadResolved.model_validate_json(json.dumps(data))
        return self.publish(event, context=CaseContext.of(lead.header), urgency=lead.header.urgency)

    def close(self, timeout: float = 10.0) -> None:
        if self.follower is not None:
            self.follower.stop(timeout)
            self.follower = None
        self.drainer.stop(timeout)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._problems is not None:
            self._problems.close()
            self._problems = None
        if self._id_writer is not None:  # first: an id's write in flight ends before its store closes
            self._id_writer.shutdown()
            self._id_writer = None
        if self._handed is not None:
            self._handed.close()
            self._handed = None
        self.trail.close(timeout)
        self.metrics.forget_outbox(self.outbox)
        self.outbox.close()
        if self._oblivious is not None:
            self._oblivious.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _why(e: LianfangError) -> str:
    """What went wrong, for a log line: a reason code or the error's kind, never its message (a message
    about a lead's fields may quote what the caller gave)."""
    return str(getattr(e, "reason", type(e).__name__))


def _iso(t: datetime) -> str:
    return t.isoformat()


@dataclass(frozen=True, slots=True)
class Finished:
    """An event the caller of :meth:`Client.inbox` is done with (it asked for the next), its record, and
    the write of its id (:meth:`HandedOut.remember`, in the client's thread)."""

    opened: envelope.Opened
    record: Any
    writing: futures.Future[bool]


def _settle(consumer: KafkaConsumer, finished: Finished | None, done: OffsetsToCommit) -> None:
    """Wait for the write of ``finished``'s id (if any): then it is never handed out again, and its offset
    may be committed. If the write failed (the disk), put the consumer back on its record, so that it
    is handed out again, and raise."""
    if finished is None:
        return
    record = finished.record
    try:
        finished.writing.result()
    except BaseException:
        _rewind(consumer, record)
        raise
    done.past(record.topic, record.partition, record.offset)


def _rewind(consumer: KafkaConsumer, record: Any) -> None:
    """Put the consumer back on ``record`` so that the next read meets it again (its offset was not
    committed; without this the consumer's own position would pass it by)."""
    # A closed consumer (AssertionError; ValueError: no partition assigned any more): the next re-reads.
    with contextlib.suppress(KafkaError, AssertionError, ValueError):
        consumer.seek(TopicPartition(record.topic, record.partition), record.offset)
