"""The simulated district as a pure generator: a seed in, a time-ordered list of steps out.

A :class:`Step` is what one agency says at one simulated moment: its sender, the event type, the
payload (JSON-ready; a lead without pseudonyms, as an agency system hands it to the SDK), and for
events other than leads the :class:`CaseContext` of the case they belong to. Nothing here reads the
clock or the disk (only the pseudonymizer it is given may ask a service): the same seed, start, days,
rate and pseudonymizer key give the same steps.

What a run contains:

- background leads, about ``rate`` a day, from every channel (hotline, police, hospital, school,
  walk-in, community, online) and every town, each with follow-ups — acknowledgements (a few late),
  actions, resolutions with the victim's satisfaction — and for some domestic-violence leads a risk
  assessment or a protection order (requested → decided, sometimes breached);
- cases made to meet each joint-meeting rule (``RULES``), at least one of each: a risk score of 14 or
  more; three leads about one victim; a reporter asking for a joint meeting; a new lead after a joint
  meeting; two agencies reporting one victim within 30 days; a minor victim of sexual assault or abuse;
  a breach of a protection order; one suspect against two victims.

Event ids in the steps are placeholders (deterministic UUIDs); the driver gives each event a fresh id
when it publishes it and rewrites the references.

The joint meeting of the ``repeat`` case is held on an alert id of the simulator's own making: the
hub's alert ids are not known to a generator that does not read the bus. The meeting's envelope
carries the victim's pseudonym as its subject.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from schemas.events import LeadReported, RiskAnswers
from services.importers.values import CHINA
from services.kernel import ids
from services.kernel.pseudonym import Pseudonymizer
from services.sdk.client import CaseContext, default_urgency
from services.sdk.client import person_pseudonym as subject_pseudonym
from services.simulator import district
from services.simulator.people import PeopleFactory, SyntheticPerson

RULES: Final = (
    "high_risk",
    "escalation",
    "professional_judgement",
    "repeat",
    "convergence",
    "minor_sexual_abuse",
    "order_breach",
    "serial_suspect",
)
"""The joint-meeting rules, as ``AlertReasonCode`` names them; each has at least one case per run."""

CHANNELS: Final = ("hotline_12338", "police_call", "hospital", "school", "walk_in", "community", "online")
TOWN_IDS: Final = tuple(town for town, _ in district.TOWNS)
RISK_QUESTIONS: Final = tuple(RiskAnswers.model_fields)
ID_FIELDS: Final = ("lead_id", "request_id", "order_id", "alert_id")
"""Payload fields that hold event ids (placeholders the driver replaces with fresh ids)."""

_CHANNEL_WEIGHTS: Final = (25, 30, 10, 10, 12, 8, 5)
_CATEGORIES: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "hotline_12338": (
        ("domestic_violence", 60),
        ("sexual_assault", 8),
        ("employment_discrimination", 10),
        ("neglect_of_guardianship", 5),
        ("child_abuse", 5),
        ("other", 12),
    ),
    "police_call": (
        ("domestic_violence", 70),
        ("sexual_assault", 15),
        ("trafficking", 5),
        ("child_abuse", 10),
    ),
    "hospital": (("domestic_violence", 70), ("sexual_assault", 20), ("child_abuse", 10)),
    "school": (
        ("child_abuse", 30),
        ("sexual_assault", 20),
        ("neglect_of_guardianship", 30),
        ("domestic_violence", 20),
    ),
    "walk_in": (("domestic_violence", 70), ("employment_discrimination", 20), ("child_labour", 10)),
    "community": (("neglect_of_guardianship", 40), ("domestic_violence", 40), ("child_abuse", 20)),
    "online": (("domestic_violence", 50), ("employment_discrimination", 30), ("sexual_assault", 20)),
}
_CHILD_CATEGORIES: Final = frozenset({"child_abuse", "neglect_of_guardianship", "child_labour"})
_RELATIONS: Final[dict[str, tuple[str, ...]]] = {
    "domestic_violence": ("spouse", "spouse", "spouse", "former_spouse", "partner", "former_partner"),
    "sexual_assault": ("acquaintance", "acquaintance", "stranger", "teacher", "relative"),
    "child_abuse": ("parent", "parent", "step_parent", "guardian", "relative"),
    "neglect_of_guardianship": ("parent", "guardian"),
    "trafficking": ("stranger", "acquaintance"),
    "employment_discrimination": ("employer",),
    "child_labour": ("employer",),
    "other": ("other", "relative"),
}
_NARRATIVES: Final[dict[str, tuple[str, ...]]] = {
    "domestic_violence": (
        "当事人称长期遭受对方殴打辱骂，近期频率增加，身上有新旧伤痕。",
        "双方因家庭琐事争吵，对方动手推搡并摔砸物品，邻居听到呼救。",
        "当事人称对方酒后殴打，并以离婚就杀了她相威胁。",
        "当事人被限制外出和使用手机，经济来源被控制。",
    ),
    "sexual_assault": (
        "当事人称被熟人以聚会为由约出后遭性侵，尚未就医取证。",
        "当事人在公交车上遭陌生男子猥亵，已向车队反映。",
    ),
    "child_abuse": (
        "孩子身上多处淤青和抽打痕迹，称被家长用衣架打。",
        "邻居反映经常听到孩子哭喊，孩子冬天衣着单薄、面黄肌瘦。",
    ),
    "neglect_of_guardianship": (
        "孩子父母外出务工，由年迈祖父母照看，长期无人辅导，经常缺课。",
        "孩子长期独自在家，饮食无人照料。",
    ),
    "trafficking": ("群众举报有外地女子被限制人身自由，疑似被拐卖。",),
    "employment_discrimination": (
        "当事人面试时被问及婚育情况，被告知不招录未育女性。",
        "当事人怀孕后被单位调岗降薪并暗示其主动辞职。",
    ),
    "child_labour": ("有未满十六周岁的孩子在小作坊长时间务工。",),
    "other": ("当事人咨询离婚财产分割和子女抚养问题。", "当事人反映婚后被婆家要求退还彩礼。"),
}
_HANDLERS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    # category → (agency, its usual action), in the order they usually act; all are recipients by policy
    "domestic_violence": (
        ("police", "warning_letter"),
        ("womens_federation", "legal_aid"),
        ("$town_mediation", "mediation"),
    ),
    "sexual_assault": (
        ("police", "investigation_opened"),
        ("procuratorate", "judicial_aid"),
        ("health", "medical_care"),
    ),
    "child_abuse": (
        ("police", "investigation_opened"),
        ("civil_affairs", "guardianship_supervision_order"),
        ("procuratorate", "support_civil_suit"),
    ),
    "neglect_of_guardianship": (
        ("civil_affairs", "guardianship_supervision_order"),
        ("procuratorate", "guardianship_supervision_order"),
    ),
    "trafficking": (("police", "investigation_opened"), ("civil_affairs", "shelter_placement")),
    "employment_discrimination": (
        ("hrss", "referral"),
        ("trade_union", "legal_aid"),
        ("procuratorate", "support_civil_suit"),
    ),
    "child_labour": (("hrss", "other"), ("police", "investigation_opened")),
    "other": (("womens_federation", "counselling"),),
}
_RISK: Final = (
    "weapon",
    "strangulation",
    "threats_to_kill",
    "pregnancy",
    "separation",
    "escalation",
    "child_present",
    "substance_abuse",
    "suicide_threats",
    "stalking",
    "prior_police_calls",
)
_OUTCOMES: Final = (
    ("resolved", 60),
    ("partially_resolved", 15),
    ("referred", 10),
    ("withdrawn", 5),
    ("unfounded", 5),
    ("unreachable", 5),
)
_SATISFACTION: Final = (
    ("satisfied", 70),
    ("basically_satisfied", 20),
    ("dissatisfied", 5),
    ("not_reached", 5),
)
_ACK_DEADLINE: Final = {
    "immediate": timedelta(hours=1),
    "urgent": timedelta(hours=4),
    "routine": timedelta(hours=24),
}
_LATE_SHARE: Final = 0.06


@dataclass(frozen=True, slots=True)
class Step:
    """One thing an agency says at a simulated moment."""

    at: datetime
    sender: str
    type: str
    payload: dict[str, Any]
    event_id: str
    context: CaseContext | None = None  # None for a lead: the SDK derives it from the payload
    urgency: str | None = None
    audience: tuple[str, ...] = ()
    case: str = "background"
    seq: int = 0

    @property
    def kind(self) -> Literal["lead", "event"]:
        return "lead" if self.type == LeadReported.EVENT_TYPE else "event"


@dataclass(frozen=True, slots=True)
class Lead:
    """A lead the generator has produced: what its follow-ups need."""

    event_id: str
    at: datetime
    sender: str
    category: str
    town: str
    urgency: str
    context: CaseContext
    victim: SyntheticPerson


@dataclass
class District:
    """Generates the steps of a simulated district. Use :func:`generate`."""

    seed: int
    start: datetime
    days: int
    rate: float
    key: Pseudonymizer
    rng: random.Random = field(init=False)
    people: PeopleFactory = field(init=False)
    steps: list[Step] = field(default_factory=list)
    cases: dict[str, int] = field(default_factory=dict)
    _ids: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - a seeded simulation, not secrets
        self.people = PeopleFactory(self.rng)
        self.start = self.start.astimezone(CHINA)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    # -- ids and steps

    def new_id(self) -> str:
        self._ids += 1
        digest = hashlib.sha256(f"lianfang-simulator\x00{self.seed}\x00{self._ids}".encode()).digest()
        raw = bytearray(digest[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80
        raw[8] = (raw[8] & 0x3F) | 0x80
        return str(uuid.UUID(bytes=bytes(raw)))

    def add(self, step: Step) -> Step | None:
        """Keep a step that happens within the simulated days (later ones have not happened yet)."""
        if step.at >= self.end:
            return None
        step = replace(step, seq=len(self.steps))
        self.steps.append(step)
        return step

    def moment(self, lo: timedelta = timedelta(0), hi: timedelta | None = None) -> datetime:
        span = (hi if hi is not None else timedelta(days=self.days)) - lo
        return self.start + lo + timedelta(seconds=self.rng.uniform(0, max(0.0, span.total_seconds())))

    def scaled(self, natural: timedelta) -> float:
        """How much a case that takes ``natural`` time is compressed to fit in the simulated days."""
        room = timedelta(days=self.days) * 0.9
        return min(1.0, room / natural) if natural > timedelta(0) else 1.0

    # -- people

    def victim(self, at: datetime, category: str, *, minor: bool | None = None) -> SyntheticPerson:
        child = category in _CHILD_CATEGORIES if minor is None else minor
        age = self.rng.randrange(3, 17) if child else self.rng.randrange(18, 76)
        female = self.rng.random() < (0.5 if child else 0.92)
        return self.people.person(at=at.date(), age=age, female=female)

    def suspect(self, at: datetime, category: str) -> SyntheticPerson | None:
        if category == "other" and self.rng.random() < 0.5:
            return None
        share = self.rng.random()
        return self.people.person(
            at=at.date(),
            age=self.rng.randrange(22, 65),
            female=category in ("child_abuse", "neglect_of_guardianship") and share < 0.3,
            id_share=0.6,
            phone_share=0.5,
        )

    # -- leads and follow-ups

    def lead(
        self,
        *,
        at: datetime,
        sender: str,
        channel: str,
        category: str,
        town: str,
        victim: SyntheticPerson,
        suspect: SyntheticPerson | None = None,
        relationship: str | None = None,
        risk: list[str] | None = None,
        requests_joint_meeting: bool = False,
        school_related: bool = False,
        case: str = "background",
    ) -> Lead:
        day = at.date()
        suspects = []
        if suspect is not None:
            relation = relationship or self.rng.choice(_RELATIONS[category])
            suspects.append(suspect.as_person(day, relationship=relation))
        payload: dict[str, Any] = {
            "category": category,
            "channel": channel,
            "town": town,
            "occurred_at": (at - timedelta(hours=self.rng.randrange(0, 30))).isoformat(),
            "victim": victim.as_person(day),
            "suspects": suspects,
            "minor": victim.age_at(day) < 18,
            "school_related": school_related,
            "risk_indicators": risk if risk is not None else self._risk(category),
            "narrative": self.rng.choice(_NARRATIVES[category]),
            "requests_joint_meeting": requests_joint_meeting,
        }
        model = self._lead_model(payload)
        urgency = default_urgency(model)
        event_id = self.new_id()
        self.add(Step(at, sender, LeadReported.EVENT_TYPE, payload, event_id, urgency=urgency, case=case))
        context = CaseContext(
            subject=model.victim_pseudonym,
            category=category,
            minor=model.minor,
            town=town,
            school_related=school_related,
            lead_id=event_id,
        )
        return Lead(event_id, at, sender, category, town, urgency, context, victim)

    def _lead_model(self, payload: dict[str, Any]) -> LeadReported:
        suspects = [{**s, "pseudonym": self._suspect_pseudonym(s)} for s in payload["suspects"]]
        data = {
            **payload,
            "victim_pseudonym": subject_pseudonym(self.key, payload["victim"]),
            "suspects": suspects,
            "suspect_pseudonyms": [s["pseudonym"] for s in suspects if s["pseudonym"]],
        }
        return LeadReported.model_validate_json(json.dumps(data, ensure_ascii=False))

    def _suspect_pseudonym(self, suspect: dict[str, Any]) -> str | None:
        identified = suspect.get("id_number") or suspect.get("phone")
        return subject_pseudonym(self.key, suspect) if identified else None

    def _risk(self, category: str) -> list[str]:
        if category != "domestic_violence":
            return []
        return sorted(self.rng.sample(_RISK, k=self.rng.choice((0, 0, 1, 1, 2, 3))))

    def event(
        self,
        lead: Lead,
        at: datetime,
        sender: str,
        event_type: str,
        payload: dict[str, Any],
        *,
        case: str = "background",
        context: CaseContext | None = None,
        audience: tuple[str, ...] = (),
        event_id: str | None = None,
    ) -> Step | None:
        return self.add(
            Step(
                at,
                sender,
                event_type,
                payload,
                event_id or self.new_id(),
                context=context or lead.context,
                urgency=lead.urgency,
                audience=audience,
                case=case,
            )
        )

    def follow_ups(self, lead: Lead, *, case: str = "background", resolve: bool = True) -> None:
        """Acknowledgements by the agencies that handle the category, an action, a resolution."""
        handlers = [
            (f"mediation.{lead.town}" if agency == "$town_mediation" else agency, action)
            for agency, action in _HANDLERS[lead.category]
        ]
        acting = handlers[: self.rng.choice((1, 1, 2))]
        first_ack: datetime | None = None
        for agency, _action in acting:
            deadline = _ACK_DEADLINE[lead.urgency]
            late = self.rng.random() < _LATE_SHARE
            delay = deadline * (self.rng.uniform(1.2, 3.0) if late else self.rng.uniform(0.05, 0.9))
            at = lead.at + delay
            first_ack = at if first_ack is None else min(first_ack, at)
            self.event(
                lead,
                at,
                agency,
                "lead.acknowledged",
                {"lead_id": lead.event_id, "agency": agency, "acknowledged_at": at.isoformat()},
                case=case,
            )
        if first_ack is None or self.rng.random() < 0.08:
            return  # no action yet: the hub's first-action deadline will notice
        agency, action = acting[0]
        acted = first_ack + timedelta(hours=self.rng.uniform(1, 20))
        self.event(
            lead,
            acted,
            agency,
            "lead.action_taken",
            {"lead_id": lead.event_id, "action": action, "taken_at": acted.isoformat()},
            case=case,
        )
        if not resolve:
            return
        resolved = acted + timedelta(days=self.rng.uniform(1, 12))
        outcome = self._weighted(_OUTCOMES)
        satisfaction = "not_reached" if outcome == "unreachable" else self._weighted(_SATISFACTION)
        self.event(
            lead,
            resolved,
            agency,
            "lead.resolved",
            {
                "lead_id": lead.event_id,
                "outcome": outcome,
                "resolved_at": resolved.isoformat(),
                "satisfaction": satisfaction,
            },
            case=case,
        )

    def risk_assessment(self, lead: Lead, *, score: int, by: str, case: str = "background") -> None:
        yes = set(self.rng.sample(RISK_QUESTIONS, k=score))
        at = lead.at + timedelta(hours=self.rng.uniform(0.5, 6))
        self.event(
            lead,
            at,
            by,
            "risk.assessed",
            {
                "lead_id": lead.event_id,
                "victim_pseudonym": lead.context.subject,
                "answers": {question: question in yes for question in RISK_QUESTIONS},
                "score": score,
                "assessed_by": by,
            },
            case=case,
        )

    def protection_order(
        self,
        lead: Lead,
        *,
        respondent: str | None,
        breach: bool,
        case: str = "background",
        scale: float = 1.0,
    ) -> None:
        """The court registers an application, rules on it, and (``breach``) police report a breach.
        Takes up to 8 days, times ``scale``."""
        requested = lead.at + timedelta(hours=self.rng.uniform(6, 48) * scale)
        urgent = self.rng.random() < 0.4 or breach
        request = self.event(
            lead,
            requested,
            ids.COURT,
            "protection_order.requested",
            {
                "lead_id": lead.event_id,
                "victim_pseudonym": lead.context.subject,
                "respondent_pseudonym": respondent,
                "urgent": urgent,
                "requested_at": requested.isoformat(),
                "grounds": "被申请人实施家庭暴力，申请人面临遭受家庭暴力的现实危险。",
            },
            case=case,
        )
        if request is None:
            return
        decided = requested + timedelta(hours=self.rng.uniform(2, 20 if urgent else 60) * scale)
        granted = breach or self.rng.random() < 0.8
        decision_payload: dict[str, Any] = {
            "request_id": request.event_id,
            "granted": granted,
            "decided_at": decided.isoformat(),
        }
        if granted:
            decision_payload["valid_until"] = (decided + timedelta(days=182)).isoformat()
            decision_payload["terms"] = ["禁止被申请人实施家庭暴力", "禁止被申请人骚扰、跟踪、接触申请人"]
        context = replace(lead.context, lead_id=request.event_id)
        decision = self.event(
            lead, decided, ids.COURT, "protection_order.decided", decision_payload, case=case, context=context
        )
        if decision is None or not breach:
            return
        breached = decided + timedelta(days=self.rng.uniform(1, 5) * scale)
        self.event(
            lead,
            breached,
            "police",
            "protection_order.breached",
            {
                "order_id": decision.event_id,
                "victim_pseudonym": lead.context.subject,
                "breached_at": breached.isoformat(),
                "description": "被申请人违反保护令，再次到申请人住处纠缠并殴打申请人。",
            },
            case=case,
            context=replace(lead.context, lead_id=decision.event_id),
        )

    def _weighted(self, options: tuple[tuple[str, int], ...]) -> str:
        return self.rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]

    # -- the background

    def background(self) -> None:
        expected = self.rate * self.days
        drawn = round(self.rng.gauss(expected, expected**0.5)) if expected else 0
        count = max(len(TOWN_IDS), drawn)
        towns = list(TOWN_IDS)
        self.rng.shuffle(towns)
        channels = list(CHANNELS)
        self.rng.shuffle(channels)
        earlier: list[Lead] = []
        for index in range(count):
            # The first leads visit every town and every channel; the rest are drawn at random.
            town = towns[index] if index < len(towns) else self.rng.choice(TOWN_IDS)
            channel = channels[index] if index < len(channels) else self._channel()
            category = self._weighted(_CATEGORIES[channel])
            at = self.moment()
            sender = self._sender(channel, category, town)
            if earlier and self.rng.random() < 0.05:
                victim = self.rng.choice(earlier).victim  # the same person again, some time later
            else:
                victim = self.victim(at, category, minor=True if channel == "school" else None)
            lead = self.lead(
                at=at,
                sender=sender,
                channel=channel,
                category=category,
                town=town,
                victim=victim,
                suspect=self.suspect(at, category),
                school_related=channel == "school",
            )
            earlier.append(lead)
            self.follow_ups(lead)
            if category == "domestic_violence":
                if self.rng.random() < 0.35:
                    assessor = self.rng.choice(("police", "womens_federation"))
                    self.risk_assessment(lead, score=self.rng.randrange(1, 12), by=assessor)
                if self.rng.random() < 0.1:
                    self.protection_order(lead, respondent=None, breach=False)

    def _channel(self) -> str:
        return self.rng.choices(CHANNELS, weights=_CHANNEL_WEIGHTS)[0]

    def _sender(self, channel: str, category: str, town: str) -> str:
        fixed = {
            "hotline_12338": "womens_federation",
            "online": "womens_federation",
            "police_call": "police",
            "hospital": "health",
            "school": "education",
        }
        if channel in fixed:
            return fixed[channel]
        if channel == "community":
            return self.rng.choice(("social_work", "civil_affairs"))
        if category == "employment_discrimination":
            return self.rng.choice(("hrss", "trade_union"))
        if category == "child_labour":
            return "hrss"
        return self.rng.choice((f"mediation.{town}", f"mediation.{town}", "justice"))

    # -- the rule cases

    def rule_cases(self) -> None:
        per_rule = max(1, round(self.days * self.rate / 70))
        for rule in RULES:
            for _ in range(per_rule):
                getattr(self, f"_case_{rule}")()
                self.cases[rule] = self.cases.get(rule, 0) + 1

    def _place(self, natural: timedelta) -> tuple[datetime, float]:
        scale = self.scaled(natural)
        span = natural * scale
        return self.moment(hi=timedelta(days=self.days) - span - timedelta(hours=1)), scale

    def _dv_lead(self, at: datetime, sender: str, channel: str, victim: SyntheticPerson, **kw: Any) -> Lead:
        town = kw.pop("town", None) or self.rng.choice(TOWN_IDS)
        return self.lead(
            at=at,
            sender=sender,
            channel=channel,
            category="domestic_violence",
            town=town,
            victim=victim,
            **kw,
        )

    def _case_high_risk(self) -> None:
        at, _ = self._place(timedelta(days=1))
        victim = self.victim(at, "domestic_violence", minor=False)
        lead = self._dv_lead(
            at,
            "womens_federation",
            "hotline_12338",
            victim,
            suspect=self.suspect(at, "domestic_violence"),
            risk=["strangulation", "threats_to_kill"],
            case="high_risk",
        )
        self.risk_assessment(lead, score=self.rng.randrange(14, 20), by="womens_federation", case="high_risk")
        self.follow_ups(lead, case="high_risk", resolve=False)

    def _case_escalation(self) -> None:
        at, scale = self._place(timedelta(days=60))
        victim = self.victim(at, "domestic_violence", minor=False)
        suspect = self.suspect(at, "domestic_violence")
        town = self.rng.choice(TOWN_IDS)
        senders = (
            ("police", "police_call"),
            ("womens_federation", "hotline_12338"),
            ("police", "police_call"),
        )
        for n, (sender, channel) in enumerate(senders):
            when = at + timedelta(days=30 * n * scale)
            lead = self._dv_lead(
                when,
                sender,
                channel,
                victim,
                suspect=suspect,
                relationship="spouse",
                town=town,
                case="escalation",
            )
            self.follow_ups(lead, case="escalation")

    def _case_professional_judgement(self) -> None:
        at, _ = self._place(timedelta(hours=2))
        town = self.rng.choice(TOWN_IDS)
        victim = self.victim(at, "domestic_violence", minor=False)
        lead = self._dv_lead(
            at,
            f"mediation.{town}",
            "walk_in",
            victim,
            town=town,
            suspect=self.suspect(at, "domestic_violence"),
            requests_joint_meeting=True,
            case="professional_judgement",
        )
        self.follow_ups(lead, case="professional_judgement", resolve=False)

    def _case_repeat(self) -> None:
        at, scale = self._place(timedelta(days=12))
        town = self.rng.choice(TOWN_IDS)
        victim = self.victim(at, "domestic_violence", minor=False)
        suspect = self.suspect(at, "domestic_violence")
        first = self._dv_lead(
            at,
            "police",
            "police_call",
            victim,
            town=town,
            suspect=suspect,
            requests_joint_meeting=True,
            case="repeat",
        )
        self.follow_ups(first, case="repeat", resolve=False)
        alert_id = self.new_id()
        agencies = ("police", "womens_federation", f"mediation.{town}")
        scheduled = at + timedelta(days=2 * scale)
        held = at + timedelta(days=3 * scale)
        context = replace(first.context, lead_id=None)
        self.event(
            first,
            scheduled,
            ids.COORDINATORS,
            "joint_meeting.scheduled",
            {
                "alert_id": alert_id,
                "meeting_at": held.isoformat(),
                "participants": list(agencies),
                "location": "区委政法委三楼会议室",
            },
            case="repeat",
            context=context,
            audience=agencies,
        )
        items = [
            {
                "owner": "police",
                "due_at": (held + timedelta(days=7)).isoformat(),
                "description": "对被申请人进行训诫，跟进落实告诫书。",
            },
            {
                "owner": "womens_federation",
                "due_at": (held + timedelta(days=14)).isoformat(),
                "description": "为当事人提供心理疏导并协助申请人身安全保护令。",
            },
        ]
        self.event(
            first,
            held + timedelta(hours=2),
            ids.COORDINATORS,
            "joint_meeting.concluded",
            {
                "alert_id": alert_id,
                "concluded_at": (held + timedelta(hours=2)).isoformat(),
                "action_items": items,
                "action_item_deadlines": [{"owner": i["owner"], "due_at": i["due_at"]} for i in items],
                "summary": "会商认为当事人面临较高风险，明确公安、妇联分工并限期反馈。",
            },
            case="repeat",
            context=context,
            audience=agencies,
        )
        again = at + timedelta(days=10 * scale)
        lead = self._dv_lead(
            again, "police", "police_call", victim, town=town, suspect=suspect, case="repeat"
        )
        self.follow_ups(lead, case="repeat")

    def _case_convergence(self) -> None:
        at, scale = self._place(timedelta(days=3))
        town = self.rng.choice(TOWN_IDS)
        victim = self.people.person(at=at.date(), age=self.rng.randrange(20, 60), female=True, id_share=1.0)
        suspect = self.suspect(at, "domestic_violence")
        police = self._dv_lead(
            at, "police", "police_call", victim, town=town, suspect=suspect, case="convergence"
        )
        self.follow_ups(police, case="convergence")
        later = at + timedelta(days=3 * scale, hours=1)
        hospital = self._dv_lead(
            later, "health", "hospital", victim, town=town, suspect=suspect, case="convergence"
        )
        self.follow_ups(hospital, case="convergence")

    def _case_minor_sexual_abuse(self) -> None:
        at, _ = self._place(timedelta(hours=6))
        victim = self.people.person(at=at.date(), age=self.rng.randrange(8, 15), female=True, id_share=1.0)
        lead = self.lead(
            at=at,
            sender="education",
            channel="school",
            category="sexual_assault",
            town=self.rng.choice(TOWN_IDS),
            victim=victim,
            suspect=self.suspect(at, "sexual_assault"),
            relationship="teacher",
            school_related=True,
            case="minor_sexual_abuse",
        )
        self.follow_ups(lead, case="minor_sexual_abuse", resolve=False)

    def _case_order_breach(self) -> None:
        at, scale = self._place(timedelta(days=8))
        victim = self.victim(at, "domestic_violence", minor=False)
        suspect = self.people.person(at=at.date(), age=self.rng.randrange(28, 55), female=False, id_share=1.0)
        lead = self._dv_lead(at, "police", "police_call", victim, suspect=suspect, case="order_breach")
        self.follow_ups(lead, case="order_breach", resolve=False)
        respondent = subject_pseudonym(self.key, suspect.as_person(at.date()))
        self.protection_order(lead, respondent=respondent, breach=True, case="order_breach", scale=scale)

    def _case_serial_suspect(self) -> None:
        at, scale = self._place(timedelta(days=5))
        suspect = self.people.person(at=at.date(), age=self.rng.randrange(25, 50), female=False, id_share=1.0)
        for n, (sender, channel, relation) in enumerate(
            (("police", "police_call", "partner"), ("womens_federation", "hotline_12338", "former_partner"))
        ):
            when = at + timedelta(days=5 * n * scale, hours=n)
            victim = self.victim(when, "domestic_violence", minor=False)
            lead = self._dv_lead(
                when, sender, channel, victim, suspect=suspect, relationship=relation, case="serial_suspect"
            )
            self.follow_ups(lead, case="serial_suspect")


def generate(*, seed: int, start: datetime, days: int, rate: float, key: Pseudonymizer) -> list[Step]:
    """The steps of ``days`` simulated days from ``start``, in time order (a pure function)."""
    sim = District(seed=seed, start=start, days=days, rate=rate, key=key)
    sim.background()
    sim.rule_cases()
    return sorted(sim.steps, key=lambda s: (s.at, s.seq))
