"""The v1 event catalogue: one strict, frozen model per event type, and how an event is parsed and split.

Each model names in ``TRIAGE_FIELDS`` the fields sealed into the envelope's ``triage`` section (what the
joint-meeting hub needs: categories, flags, scores, pseudonyms, dates); all other fields go into the
``details`` section (identities, contacts, narrative). Triage holds no personal data except pseudonyms.
Errors are pydantic's ``ValidationError``; ``services/`` translates them into its own error types.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date
from functools import cache
from typing import Annotated, Any, ClassVar, Final, Literal, Self, TypeVar, get_args, overload

from pydantic import (
    AfterValidator,
    AwareDatetime,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_core import ValidationError as CoreValidationError

from schemas import strict_json
from schemas.common import (
    Category,
    Channel,
    EventId,
    ParticipantId,
    Pseudonym,
    SchemaVersion,
    Town,
    UniqueList,
    Urgency,
    WireModel,
)

__all__ = [
    "EVENT_MODELS",
    "SHARED_FIELD",
    "UPCASTERS",
    "ActionDeadline",
    "ActionItem",
    "ActionKind",
    "AgencyRates",
    "AlertReason",
    "AlertReasonCode",
    "AlertStatus",
    "DeadlineKind",
    "EventModel",
    "IdentifierFlag",
    "JointMeetingAlert",
    "JointMeetingConcluded",
    "JointMeetingScheduled",
    "LeadAcknowledged",
    "LeadActionTaken",
    "LeadReported",
    "LeadResolved",
    "Outcome",
    "Person",
    "ProtectionOrderBreached",
    "ProtectionOrderDecided",
    "ProtectionOrderRequested",
    "Relationship",
    "RiskAnswers",
    "RiskAssessed",
    "RiskIndicator",
    "Satisfaction",
    "Sex",
    "SupervisionBreach",
    "SupervisionReport",
    "Suspect",
    "Upcaster",
    "event_model",
    "join_sections",
    "parse_event",
    "split_sections",
    "upcast",
]

SHARED_FIELD: Final = "schema_version"
"""The one field both sections carry, so that each section says which schema it follows."""

_FIRST_VERSION: Final = 1  # what data without a schema_version is: the version before any upcaster
_TEXT_MAX: Final = 20_000  # narrative and other free text
_SHORT_TEXT_MAX: Final = 2_000
_NAME_MAX: Final = 100
_LIST_MAX: Final = 100
_REFS_MAX: Final = 1_000
_TRIAGE_RULE: Final = "__lianfang_triage_rule__"

_F = TypeVar("_F", bound=Callable[..., Any])
_M = TypeVar("_M", bound=WireModel)

V1 = Annotated[
    Literal[1],
    SchemaVersion,
    Field(description="模式版本 / version of this event type's schema; older versions are upcast"),
]


def _triage_rule(func: _F) -> _F:
    """Mark a model validator that reads triage fields only, so triage-only recipients run it too."""
    setattr(func, _TRIAGE_RULE, True)
    return func


class EventModel(WireModel):
    """Base of every event: its type string, its schema version and which fields are triage."""

    EVENT_TYPE: ClassVar[str]
    TRIAGE_FIELDS: ClassVar[frozenset[str]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = set(cls.model_fields)
        version = cls.model_fields.get(SHARED_FIELD)
        if version is None or type(version.default) is not int:
            raise TypeError(f"{cls.__name__} must declare `{SHARED_FIELD}: Literal[n] = n`")
        unknown = cls.TRIAGE_FIELDS - fields
        if unknown or SHARED_FIELD in cls.TRIAGE_FIELDS:
            raise TypeError(
                f"{cls.__name__}.TRIAGE_FIELDS must name its own fields, without {SHARED_FIELD!r}; "
                f"unknown: {sorted(unknown)}"
            )


def _current_version(model: type[EventModel]) -> int:
    version: int = model.model_fields[SHARED_FIELD].default
    return version


# --- lead.reported --------------------------------------------------------------------------------

Sex = Literal["female", "male", "unknown"]

Relationship = Literal[
    "spouse",  # 配偶
    "former_spouse",  # 前配偶
    "partner",  # 同居 / 恋爱对象
    "former_partner",  # 前同居 / 前恋爱对象
    "parent",  # 父母
    "step_parent",  # 继父母
    "guardian",  # 其他监护人
    "relative",  # 其他亲属
    "teacher",  # 教师、教职工
    "employer",  # 雇主、上级
    "acquaintance",  # 熟人
    "stranger",  # 陌生人
    "other",  # 其他
]

RiskIndicator = Literal[
    "weapon",  # 使用或威胁使用凶器
    "strangulation",  # 掐颈、窒息
    "threats_to_kill",  # 扬言杀害
    "pregnancy",  # 怀孕或新生儿
    "separation",  # 正在或最近分居、离婚
    "escalation",  # 暴力频率或严重程度上升
    "child_present",  # 有儿童在场或目睹
    "substance_abuse",  # 酗酒、吸毒
    "suicide_threats",  # 嫌疑人扬言自杀
    "stalking",  # 跟踪、骚扰
    "sexual_violence",  # 性暴力
    "prior_police_calls",  # 曾多次报警
]


IdentifierFlag = Literal[
    "id_number_unverified",  # 证件号码校验位不符：疑似录入错误
    "id_number_invalid",  # 证件号码不是有效的居民身份证号码（格式或出生日期）
    "travel_document_invalid",  # 护照或通行证号码格式不符
    "phone_invalid",  # 电话号码不是有效的手机或固话号码
    "no_valid_identifier",  # 无任何有效标识：假名取自原样录入的号码，或仅属本线索
]
"""What recipients should check about a person's identifiers: one that stayed invalid after
normalization was not used to link the person (the subject fell back to the next valid one), and the
lead was delivered all the same (``services/kernel/pseudonym.py``, ``identify``)."""


_OMITTED_WHEN_EMPTY: Final = ("travel_document", "identifier_flags")


class Person(WireModel):
    """一个人：当事人或嫌疑人 / A person, victim or suspect; personal data, so only in ``details``."""

    name: str = Field(
        min_length=1,
        max_length=_NAME_MAX,
        description="姓名 / name, as known (a partial name such as 王某 if that is all there is)",
    )
    id_number: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="证件号码 / identity document number (居民身份证号码 or other), as given",
    )
    id_number_unverified: bool = Field(
        default=False,
        description="证件号码校验位不符，待核实 / the resident ID number's check digit is wrong: it was "
        "kept as given (a report is never refused for a typing error), not used to link the person, "
        "and should be checked",
    )
    travel_document: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="护照或通行证号码 / passport or travel permit number (港澳/台湾通行证, 回乡证), as given",
    )
    identifier_flags: UniqueList[IdentifierFlag] = Field(
        default_factory=list,
        max_length=len(get_args(IdentifierFlag)),
        description="标识待核实 / what to check about the identifiers: those flagged were kept as given "
        "but not used to link the person",
    )
    phone: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="联系电话 / phone number, as given (normalized only to compute pseudonyms)",
    )
    birth_date: date | None = Field(default=None, description="出生日期 / date of birth")
    sex: Sex | None = Field(default=None, description="性别 / sex")
    is_minor: bool = Field(description="是否未成年人（未满18周岁）/ whether the person is under 18")
    age: int | None = Field(default=None, ge=0, le=120, description="年龄 / age in years, as given")

    @model_validator(mode="after")
    def _minor_agrees_with_age(self) -> Self:
        if self.age is not None and self.is_minor != (self.age < 18):
            raise ValueError("is_minor must agree with age: a person under 18 is a minor (未成年人)")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_newer_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written only when used, so that readers which predate them still read every person without
        # a travel document or a flag (the wire models refuse unknown fields).
        data: dict[str, Any] = handler(self)
        for name in _OMITTED_WHEN_EMPTY:
            if name in data and not data[name]:
                del data[name]
        return data


class Suspect(Person):
    """嫌疑人 / A suspect (the person said to have caused the harm) and their relation to the victim."""

    relationship: Relationship = Field(description="与受害人关系 / relationship to the victim")
    pseudonym: Pseudonym | None = Field(
        default=None, description="嫌疑人假名 / pseudonym of the suspect, when identifiers allow one"
    )


class LeadReported(EventModel):
    """线索报告 / A lead: an agency met a possible case of violence against a woman or a child."""

    EVENT_TYPE: ClassVar[str] = "lead.reported"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "category",
            "channel",
            "town",
            "occurred_at",
            "victim_pseudonym",
            "suspect_pseudonyms",
            "minor",
            "school_related",
            "risk_indicators",
            "requests_joint_meeting",
        }
    )

    schema_version: V1 = 1
    category: Category = Field(description="线索类别 / category of the lead")
    channel: Channel = Field(description="发现渠道 / channel through which the lead came in")
    town: Town
    occurred_at: AwareDatetime | None = Field(
        default=None, description="发生时间 / when the incident happened, if known"
    )
    victim: Person = Field(description="受害人 / the victim")
    victim_pseudonym: Pseudonym = Field(description="受害人假名 / pseudonym of the victim")
    suspects: list[Suspect] = Field(
        default_factory=list, max_length=_LIST_MAX, description="嫌疑人 / suspects, if any are known"
    )
    suspect_pseudonyms: UniqueList[Pseudonym] = Field(
        default_factory=list,
        max_length=_LIST_MAX,
        description=(
            "嫌疑人假名 / the suspects' pseudonyms, in the order of `suspects` (those that have one); "
            "repeated here so that triage can match suspects across victims"
        ),
    )
    minor: bool = Field(description="受害人是否未成年人 / whether the victim is a minor")
    school_related: bool = Field(default=False, description="是否涉校 / whether a school is involved")
    risk_indicators: UniqueList[RiskIndicator] = Field(
        default_factory=list, description="风险因素 / risk indicators seen"
    )
    narrative: str = Field(
        max_length=_TEXT_MAX, description="情况描述 / what happened, in the reporter's words"
    )
    requests_joint_meeting: bool = Field(
        description=(
            "报告人请求联席会商（专业判断）/ the reporter asks for a joint meeting (professional judgement)"
        )
    )
    reporter_contact: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="报告人联系方式 / how to reach the reporter",
    )

    @model_validator(mode="after")
    def _triage_agrees_with_details(self) -> Self:
        if self.minor != self.victim.is_minor:
            raise ValueError("minor must equal victim.is_minor: the triage flag and the details disagree")
        expected = [suspect.pseudonym for suspect in self.suspects if suspect.pseudonym is not None]
        if self.suspect_pseudonyms != expected:
            raise ValueError(
                "suspect_pseudonyms must list the pseudonym of each suspect that has one, in order"
            )
        return self


# --- risk.assessed --------------------------------------------------------------------------------


def _question(zh: str, en: str) -> Any:
    return Field(description=f"{zh} / {en}")


class RiskAnswers(WireModel):
    """风险评估问卷 / The 24 yes/no questions of the risk checklist (DASH style); every one is answered."""

    current_injury: bool = _question("本次事件是否造成伤害", "did the current incident cause an injury")
    very_frightened: bool = _question("受害人是否非常害怕", "is the victim very frightened")
    isolated: bool = _question("受害人是否被孤立于亲友之外", "is the victim isolated from family and friends")
    depressed_suicidal: bool = _question("受害人是否抑郁或有自杀念头", "is the victim depressed or suicidal")
    separation: bool = _question("是否正在或最近分居、离婚", "has the victim separated or tried to, recently")
    conflict_over_child_contact: bool = _question(
        "是否因子女探视、抚养发生冲突", "is there conflict over contact with the children"
    )
    stalking_harassment: bool = _question(
        "嫌疑人是否跟踪、骚扰受害人", "does the suspect stalk or harass the victim"
    )
    pregnant_or_new_baby: bool = _question(
        "受害人是否怀孕或近期生育", "is the victim pregnant or has she had a baby in the last 18 months"
    )
    children_not_his: bool = _question(
        "家中是否有非嫌疑人亲生的子女", "are there children in the household who are not the suspect's"
    )
    child_abuse_by_suspect: bool = _question("嫌疑人是否伤害过儿童", "has the suspect ever hurt the children")
    abuse_happening_more: bool = _question("暴力是否越来越频繁", "is the abuse happening more often")
    abuse_getting_worse: bool = _question("暴力是否越来越严重", "is the abuse getting worse")
    controlling_jealous: bool = _question(
        "嫌疑人是否控制欲强、嫉妒心重", "is the suspect controlling or excessively jealous"
    )
    weapons_used: bool = _question(
        "嫌疑人是否使用或威胁使用凶器", "has the suspect used or threatened to use a weapon"
    )
    threats_to_kill: bool = _question(
        "嫌疑人是否扬言杀害受害人或他人", "has the suspect threatened to kill the victim or someone else"
    )
    strangulation: bool = _question(
        "嫌疑人是否掐颈、捂口鼻或试图使其窒息",
        "has the suspect strangled, choked, suffocated or drowned the victim",
    )
    sexual_abuse: bool = _question(
        "嫌疑人是否实施性暴力或令其不适的性行为",
        "does the suspect do or say sexual things that hurt the victim",
    )
    other_victims: bool = _question(
        "是否还有其他人（如子女、老人、其他家庭成员）面临嫌疑人伤害",
        "are other people (children, elders, other family members) at risk from the suspect",
    )
    abused_others_or_animals: bool = _question(
        "嫌疑人是否伤害过他人或动物", "has the suspect hurt anyone else, or pets and animals"
    )
    financial_problems: bool = _question(
        "嫌疑人是否有经济困难或失业", "has the suspect had financial problems or lost a job recently"
    )
    substance_misuse: bool = _question(
        "嫌疑人是否酗酒、吸毒或滥用药物", "does the suspect misuse alcohol, drugs or medication"
    )
    suspect_suicidal: bool = _question(
        "嫌疑人是否扬言或试图自杀", "has the suspect threatened or attempted suicide"
    )
    breached_orders: bool = _question(
        "嫌疑人是否违反过保护令、保释条件或告诫",
        "has the suspect breached a protection order, bail or a warning",
    )
    criminal_history: bool = _question(
        "嫌疑人是否有违法犯罪记录", "does the suspect have a criminal record, for violence or otherwise"
    )

    def yes_count(self) -> int:
        """How many questions were answered yes: the checklist's score."""
        return sum(1 for answer in self.model_dump().values() if answer is True)


class RiskAssessed(EventModel):
    """风险评估 / A structured risk assessment of a victim: the checklist's answers and its score."""

    EVENT_TYPE: ClassVar[str] = "risk.assessed"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"lead_id", "victim_pseudonym", "answers", "score", "assessed_by"}
    )

    schema_version: V1 = 1
    lead_id: EventId = Field(description="线索 / id of the lead.reported event assessed")
    victim_pseudonym: Pseudonym = Field(description="受害人假名 / pseudonym of the victim")
    answers: RiskAnswers = Field(description="问卷答案 / the answers to the checklist")
    score: int = Field(ge=0, le=24, description="风险评分 / risk score: the number of yes answers, 0-24")
    assessed_by: ParticipantId = Field(description="评估机构 / agency that made the assessment")
    notes: str | None = Field(
        default=None, max_length=_TEXT_MAX, description="评估说明 / the assessor's notes"
    )

    @model_validator(mode="after")
    @_triage_rule
    def _score_counts_the_yes_answers(self) -> Self:
        if self.score != self.answers.yes_count():
            raise ValueError("score must equal the number of yes answers in the checklist")
        return self


# --- lead lifecycle -------------------------------------------------------------------------------

ActionKind = Literal[
    "warning_letter",  # 告诫书
    "investigation_opened",  # 立案侦查 / 调查
    "legal_aid",  # 法律援助
    "judicial_aid",  # 司法救助
    "counselling",  # 心理疏导
    "guardianship_supervision_order",  # 督促监护令
    "support_civil_suit",  # 支持起诉
    "shelter_placement",  # 庇护安置
    "medical_care",  # 医疗救治
    "mediation",  # 调解
    "referral",  # 转介
    "other",  # 其他
]

Outcome = Literal[
    "resolved",  # 已解决
    "partially_resolved",  # 部分解决
    "referred",  # 已转由其他机构办理
    "withdrawn",  # 当事人撤回
    "unfounded",  # 经核实不属实
    "unreachable",  # 无法联系当事人
    "other",  # 其他
]

Satisfaction = Literal[
    "satisfied",  # 满意
    "basically_satisfied",  # 基本满意
    "dissatisfied",  # 不满意
    "not_reached",  # 未能回访
]


class LeadAcknowledged(EventModel):
    """线索签收 / An agency has taken charge of a lead routed to it (starts its first-action clock)."""

    EVENT_TYPE: ClassVar[str] = "lead.acknowledged"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"lead_id", "agency", "acknowledged_at"})

    schema_version: V1 = 1
    lead_id: EventId = Field(description="线索 / id of the lead.reported event")
    agency: ParticipantId = Field(description="签收机构 / agency that acknowledges the lead")
    acknowledged_at: AwareDatetime = Field(description="签收时间 / when the lead was acknowledged")


class LeadActionTaken(EventModel):
    """处置措施 / An agency took an action on a lead, such as a warning letter (告诫书) or legal aid."""

    EVENT_TYPE: ClassVar[str] = "lead.action_taken"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"lead_id", "action", "taken_at"})

    schema_version: V1 = 1
    lead_id: EventId = Field(description="线索 / id of the lead.reported event")
    action: ActionKind = Field(description="措施类别 / kind of action taken")
    taken_at: AwareDatetime = Field(description="采取措施时间 / when the action was taken")
    note: str | None = Field(default=None, max_length=_TEXT_MAX, description="说明 / note on the action")


class LeadResolved(EventModel):
    """办结反馈 / A lead is closed, with its outcome and the victim's satisfaction (满意度回访)."""

    EVENT_TYPE: ClassVar[str] = "lead.resolved"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"lead_id", "outcome", "resolved_at", "satisfaction"})

    schema_version: V1 = 1
    lead_id: EventId = Field(description="线索 / id of the lead.reported event")
    outcome: Outcome = Field(description="办理结果 / outcome")
    resolved_at: AwareDatetime = Field(description="办结时间 / when the lead was closed")
    satisfaction: Satisfaction = Field(
        description="满意度 / the victim's satisfaction, from the follow-up call"
    )
    feedback: str | None = Field(
        default=None, max_length=_TEXT_MAX, description="回访意见 / what the victim said in the follow-up"
    )


# --- protection orders (人身安全保护令) ------------------------------------------------------------------


class ProtectionOrderRequested(EventModel):
    """申请人身安全保护令 / An application for a personal safety protection order.

    The court decides within 72 hours, or 24 hours when the application is urgent.
    """

    EVENT_TYPE: ClassVar[str] = "protection_order.requested"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"lead_id", "victim_pseudonym", "respondent_pseudonym", "urgent", "requested_at"}
    )

    schema_version: V1 = 1
    lead_id: EventId | None = Field(default=None, description="线索 / id of the related lead, if any")
    victim_pseudonym: Pseudonym = Field(
        description="申请人（受害人）假名 / pseudonym of the applicant (victim)"
    )
    respondent_pseudonym: Pseudonym | None = Field(
        default=None, description="被申请人假名 / pseudonym of the respondent, when identifiers allow one"
    )
    urgent: bool = Field(description="情况紧急 / urgent: to be decided within 24 hours")
    requested_at: AwareDatetime = Field(description="申请时间 / when the application was made")
    grounds: str = Field(
        min_length=1, max_length=_TEXT_MAX, description="申请理由 / grounds for the application"
    )


class ProtectionOrderDecided(EventModel):
    """保护令裁定 / The court granted or refused a protection order."""

    EVENT_TYPE: ClassVar[str] = "protection_order.decided"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"request_id", "granted", "decided_at", "valid_until"}
    )

    schema_version: V1 = 1
    request_id: EventId = Field(description="申请 / id of the protection_order.requested event")
    granted: bool = Field(description="是否准予 / whether the order was granted")
    decided_at: AwareDatetime = Field(description="裁定时间 / when the decision was made")
    valid_until: AwareDatetime | None = Field(
        default=None, description="有效期至 / when a granted order expires"
    )
    terms: list[Annotated[str, Field(min_length=1, max_length=_SHORT_TEXT_MAX)]] = Field(
        default_factory=list, max_length=_LIST_MAX, description="保护令内容 / the terms of the order"
    )

    @model_validator(mode="after")
    @_triage_rule
    def _validity_fits_the_decision(self) -> Self:
        if self.valid_until is not None:
            if not self.granted:
                raise ValueError("valid_until is only for a granted order")
            if self.valid_until <= self.decided_at:
                raise ValueError("valid_until must be later than decided_at")
        return self


class ProtectionOrderBreached(EventModel):
    """违反保护令 / A protection order was breached (an immediate joint-meeting trigger)."""

    EVENT_TYPE: ClassVar[str] = "protection_order.breached"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"order_id", "victim_pseudonym", "breached_at"})

    schema_version: V1 = 1
    order_id: EventId = Field(description="保护令 / id of the protection_order.decided event that granted it")
    victim_pseudonym: Pseudonym = Field(description="受保护人假名 / pseudonym of the protected person")
    breached_at: AwareDatetime = Field(description="违反时间 / when the breach happened")
    description: str = Field(
        min_length=1, max_length=_TEXT_MAX, description="违反情况 / what the respondent did"
    )


# --- joint meetings (联席会议 / 会商) -------------------------------------------------------------------

AlertReasonCode = Literal[
    "high_risk",  # 高风险（风险评分达到阈值）
    "escalation",  # 可能升级（同一受害人多次线索）
    "professional_judgement",  # 专业判断（报告人请求）
    "repeat",  # 会商后再次发生
    "convergence",  # 多机构报告同一受害人
    "minor_sexual_abuse",  # 未成年人遭受性侵害或虐待
    "order_breach",  # 违反保护令
    "serial_suspect",  # 同一嫌疑人涉及多名受害人
]

AlertStatus = Literal["open", "acknowledged", "scheduled", "concluded"]


class AlertReason(WireModel):
    """会商理由 / Why the hub asks for a joint meeting: a rule that fired and what made it fire."""

    code: AlertReasonCode = Field(description="触发规则 / the rule that fired")
    detail: str = Field(
        min_length=1,
        max_length=500,
        description="触发依据 / what made it fire, without personal data (e.g. `risk score 16 >= 14`)",
    )


def _one_reason_per_code(reasons: list[AlertReason]) -> list[AlertReason]:
    codes = [reason.code for reason in reasons]
    if len(set(codes)) != len(codes):
        raise ValueError("each reason code may appear once; a later trigger updates its detail")
    return reasons


class JointMeetingAlert(EventModel):
    """会商预警 / The hub asks the joint meeting to confer on a victim; one open alert per victim, updated."""

    EVENT_TYPE: ClassVar[str] = "joint_meeting.alert"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "alert_id",
            "victim_pseudonym",
            "reasons",
            "agencies_involved",
            "related_events",
            "raised_at",
            "updated_at",
            "status",
        }
    )

    schema_version: V1 = 1
    alert_id: EventId = Field(description="预警标识 / id of the alert, the same in all its updates")
    victim_pseudonym: Pseudonym = Field(description="受害人假名 / pseudonym of the victim")
    reasons: Annotated[list[AlertReason], AfterValidator(_one_reason_per_code)] = Field(
        min_length=1, max_length=_LIST_MAX, description="会商理由 / why a joint meeting is asked for"
    )
    agencies_involved: UniqueList[ParticipantId] = Field(
        default_factory=list, max_length=_LIST_MAX, description="涉及机构 / agencies that reported or acted"
    )
    related_events: UniqueList[EventId] = Field(
        default_factory=list,
        max_length=_REFS_MAX,
        description="相关事件 / ids of the events behind the alert",
    )
    raised_at: AwareDatetime = Field(description="预警时间 / when the alert was first raised")
    updated_at: AwareDatetime = Field(description="更新时间 / when the alert last changed")
    status: AlertStatus = Field(description="状态 / status of the alert")

    @model_validator(mode="after")
    @_triage_rule
    def _updated_after_raised(self) -> Self:
        if self.updated_at < self.raised_at:
            raise ValueError("updated_at must not be earlier than raised_at")
        return self


class JointMeetingScheduled(EventModel):
    """会商安排 / Coordinators scheduled a joint meeting on an alert."""

    EVENT_TYPE: ClassVar[str] = "joint_meeting.scheduled"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"alert_id", "meeting_at", "participants"})

    schema_version: V1 = 1
    alert_id: EventId = Field(description="预警 / id of the alert the meeting is about")
    meeting_at: AwareDatetime = Field(description="会商时间 / when the meeting takes place")
    participants: UniqueList[ParticipantId] = Field(
        min_length=1, max_length=_LIST_MAX, description="参会机构 / agencies asked to attend"
    )
    location: str | None = Field(
        default=None, min_length=1, max_length=200, description="会商地点 / where the meeting takes place"
    )


class ActionDeadline(WireModel):
    """任务期限 / Who must do an action item and by when, without saying what (that is in details)."""

    owner: ParticipantId = Field(description="责任机构 / agency responsible")
    due_at: AwareDatetime = Field(description="完成期限 / deadline")


class ActionItem(ActionDeadline):
    """会商任务 / An action agreed at a joint meeting, its owner agency and its deadline."""

    description: str = Field(
        min_length=1, max_length=_SHORT_TEXT_MAX, description="任务内容 / what is to be done"
    )


class JointMeetingConcluded(EventModel):
    """会商结论 / A joint meeting concluded, with action items each owned by an agency and due by a date."""

    EVENT_TYPE: ClassVar[str] = "joint_meeting.concluded"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"alert_id", "concluded_at", "action_item_deadlines"})

    schema_version: V1 = 1
    alert_id: EventId = Field(description="预警 / id of the alert the meeting was about")
    concluded_at: AwareDatetime = Field(description="结束时间 / when the meeting concluded")
    action_items: list[ActionItem] = Field(
        default_factory=list, max_length=_LIST_MAX, description="任务清单 / the action items agreed"
    )
    action_item_deadlines: list[ActionDeadline] = Field(
        default_factory=list,
        max_length=_LIST_MAX,
        description=(
            "任务期限 / owner and deadline of each action item, in order; repeated here so that "
            "supervision can follow the deadlines without reading the items"
        ),
    )
    summary: str = Field(min_length=1, max_length=_TEXT_MAX, description="会商纪要 / summary of the meeting")

    @model_validator(mode="after")
    def _deadlines_mirror_the_items(self) -> Self:
        expected = [ActionDeadline(owner=item.owner, due_at=item.due_at) for item in self.action_items]
        if self.action_item_deadlines != expected:
            raise ValueError(
                "action_item_deadlines must give the owner and due_at of each action item, in order"
            )
        return self


# --- supervision (督查) -----------------------------------------------------------------------------

DeadlineKind = Literal["acknowledge", "first_action", "resolve", "protection_order_decision", "action_item"]


class SupervisionBreach(EventModel):
    """超期督办 / An agency missed a deadline (三即时); the breach escalates to the coordinators."""

    EVENT_TYPE: ClassVar[str] = "supervision.breach"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"lead_id", "agency", "deadline_kind", "due_at", "detected_at", "urgency"}
    )

    schema_version: V1 = 1
    lead_id: EventId = Field(
        description=(
            "事件 / id of the event that started the clock: the lead.reported, "
            "protection_order.requested or joint_meeting.concluded event"
        )
    )
    agency: ParticipantId = Field(description="超期机构 / agency that missed the deadline")
    deadline_kind: DeadlineKind = Field(description="期限类别 / which deadline was missed")
    due_at: AwareDatetime = Field(description="期限 / when it was due")
    detected_at: AwareDatetime = Field(description="发现时间 / when the breach was detected")
    urgency: Urgency = Field(description="紧急程度 / urgency of the lead, which set the deadline")

    @model_validator(mode="after")
    @_triage_rule
    def _detected_after_due(self) -> Self:
        if self.detected_at < self.due_at:
            raise ValueError(
                "detected_at must not be earlier than due_at: a deadline not yet due is not missed"
            )
        return self


_Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class AgencyRates(WireModel):
    """一个机构的接诉即办指标 / One agency's counts and rates (响应率 / 解决率 / 满意率) for a period.

    A lead still inside a deadline is pending: it counts in ``received`` but in no rate's denominator
    (``response_due``, ``resolution_due``). A rate is ``null`` while nothing is due for it. The three
    ``*_due`` / ``with_feedback`` counts are absent from reports of hubs before them.
    """

    agency: ParticipantId = Field(description="机构 / agency")
    received: int = Field(ge=0, description="收到线索数 / leads routed to the agency")
    responded_in_time: int = Field(ge=0, description="及时响应数 / leads acknowledged in time")
    resolved: int = Field(ge=0, description="办结数 / leads resolved")
    satisfied: int = Field(ge=0, description="满意数 / resolved leads whose victim was (basically) satisfied")
    response_due: int | None = Field(
        default=None,
        ge=0,
        description="应响应数 / leads answered or past their acknowledgement deadline (the rest are pending)",
    )
    resolution_due: int | None = Field(
        default=None,
        ge=0,
        description="应办结数 / leads resolved or past their resolution deadline (the rest are pending)",
    )
    with_feedback: int | None = Field(
        default=None, ge=0, description="有回访评价数 / resolved leads whose victim gave feedback"
    )
    response_rate: _Rate | None = Field(
        description="响应率 / response rate, 0-1: responded_in_time / response_due; null while none is due"
    )
    resolution_rate: _Rate | None = Field(
        description="解决率 / resolution rate, 0-1: resolved / resolution_due; null while none is due"
    )
    satisfaction_rate: _Rate | None = Field(
        description="满意率 / satisfaction rate, 0-1: satisfied / with_feedback; null without feedback"
    )

    @model_validator(mode="after")
    def _counts_are_consistent(self) -> Self:
        if self.responded_in_time > self.received or self.resolved > self.received:
            raise ValueError("responded_in_time and resolved cannot exceed received")
        if self.satisfied > self.resolved:
            raise ValueError("satisfied cannot exceed resolved")
        bounds = (
            (self.responded_in_time, self.response_due, self.received, "response_due"),
            (self.resolved, self.resolution_due, self.received, "resolution_due"),
            (self.satisfied, self.with_feedback, self.resolved, "with_feedback"),
        )
        for low, count, high, name in bounds:
            if count is not None and not low <= count <= high:
                raise ValueError(f"{name} must lie between the count it divides and the count it is part of")
        return self


def _one_row_per_agency(rows: list[AgencyRates]) -> list[AgencyRates]:
    agencies = [row.agency for row in rows]
    if len(set(agencies)) != len(agencies):
        raise ValueError("each agency may have one row")
    return rows


class SupervisionReport(EventModel):
    """督查报告 / Response, resolution and satisfaction rates per agency over a period."""

    EVENT_TYPE: ClassVar[str] = "supervision.report"
    TRIAGE_FIELDS: ClassVar[frozenset[str]] = frozenset({"period_start", "period_end", "rows"})

    schema_version: V1 = 1
    period_start: AwareDatetime = Field(description="统计期起 / start of the period (inclusive)")
    period_end: AwareDatetime = Field(description="统计期止 / end of the period (exclusive)")
    rows: Annotated[list[AgencyRates], AfterValidator(_one_row_per_agency)] = Field(
        default_factory=list, max_length=_REFS_MAX, description="各机构指标 / one row per agency"
    )

    @model_validator(mode="after")
    @_triage_rule
    def _period_is_not_empty(self) -> Self:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must be later than period_start")
        return self


# --- the registry ---------------------------------------------------------------------------------

_MODELS: Final[tuple[type[EventModel], ...]] = (
    LeadReported,
    RiskAssessed,
    LeadAcknowledged,
    LeadActionTaken,
    LeadResolved,
    ProtectionOrderRequested,
    ProtectionOrderDecided,
    ProtectionOrderBreached,
    JointMeetingAlert,
    JointMeetingScheduled,
    JointMeetingConcluded,
    SupervisionBreach,
    SupervisionReport,
)

EVENT_MODELS: Final[dict[str, type[EventModel]]] = {model.EVENT_TYPE: model for model in _MODELS}
"""Every event type of the catalogue and its model."""
if len(EVENT_MODELS) != len(_MODELS):  # pragma: no cover - guards against a copy-pasted EVENT_TYPE
    raise TypeError("two event models declare the same EVENT_TYPE")


def event_model(event_type: str) -> type[EventModel]:
    """The model of an event type; ``KeyError`` names the known types when there is none."""
    try:
        return EVENT_MODELS[event_type]
    except KeyError:
        raise KeyError(
            f"unknown event type {event_type!r}; the v1 catalogue has: {', '.join(sorted(EVENT_MODELS))}"
        ) from None


# --- upcasting ------------------------------------------------------------------------------------

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(event type, version n)`` → a function from the fields of version n to those of version n + 1.

An upcaster reshapes fields only; :func:`upcast` sets ``schema_version``. Because a triage-only recipient
upcasts the triage section alone, an upcaster must leave absent fields absent rather than fail on them.
"""


def upcast(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Bring an event's fields from its ``schema_version`` up to the model's current version.

    Data without ``schema_version`` is version 1. A version that is not an integer, is not older than
    the current one, or has no upcaster is returned as it is, and validation then rejects it.
    The input is not modified.
    """
    current = _current_version(event_model(event_type))
    upcast_data = dict(data)
    version = upcast_data.get(SHARED_FIELD, _FIRST_VERSION)
    if type(version) is not int:
        return upcast_data
    while version < current:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            break
        version += 1
        upcast_data = dict(step(upcast_data))
        upcast_data[SHARED_FIELD] = version
    return upcast_data


# --- parsing --------------------------------------------------------------------------------------


def _error(
    model: type[WireModel], error_type: str, message: str, loc: tuple[str, ...] = ()
) -> ValidationError:
    """A pydantic ``ValidationError`` of our own making, so that callers translate one kind of error."""
    detail: InitErrorDetails = {
        "type": PydanticCustomError(error_type, message),
        "loc": loc,
        "input": None,
    }
    return CoreValidationError.from_exception_data(model.__name__, [detail], hide_input=True)


def _load_json(model: type[WireModel], raw: bytes) -> Any:
    try:
        return strict_json.loads(raw)
    except ValueError as e:
        raise _error(model, "json_invalid", f"invalid JSON: {e}") from e


def _validate(model: type[_M], data: Any) -> _M:
    """Validate JSON data in JSON mode: strict mode accepts ISO 8601 strings there, not in Python mode."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except TypeError as e:
        raise TypeError(
            "sections must hold JSON values (from json.loads or model_dump(mode='json')), "
            "not Python objects such as datetime"
        ) from e
    except ValueError as e:
        raise _error(model, "json_invalid", "NaN and infinities are not JSON") from e
    return model.model_validate_json(text)


def parse_event(event_type: str, raw: bytes) -> EventModel:
    """Parse an event's JSON bytes: reject duplicate keys, upcast to the current version, validate.

    Raises ``KeyError`` for an unknown type and pydantic's ``ValidationError`` for anything else wrong.
    """
    model = event_model(event_type)
    data = _load_json(model, raw)
    if isinstance(data, dict):
        data = upcast(event_type, data)
    return _validate(model, data)


# --- sections -------------------------------------------------------------------------------------


def split_sections(event: EventModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(triage, details)``: the event's fields as JSON values, split by its ``TRIAGE_FIELDS``.

    Both sections carry ``schema_version``. The envelope seals each section for its own recipients.
    """
    data = event.model_dump(mode="json")
    version = data.pop(SHARED_FIELD)
    triage = {SHARED_FIELD: version}
    details = {SHARED_FIELD: version}
    for name, value in data.items():
        (triage if name in event.TRIAGE_FIELDS else details)[name] = value
    return triage, details


@cache
def _triage_model(model: type[EventModel]) -> type[WireModel]:
    """A model of the triage fields alone, with the model's field constraints and its triage rules."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in model.model_fields.items()
        if name in model.TRIAGE_FIELDS or name == SHARED_FIELD
    }
    rules: dict[str, Any] = {
        name: model_validator(mode="after")(decorator.func)
        for name, decorator in model.__pydantic_decorators__.model_validators.items()
        if getattr(decorator.func, _TRIAGE_RULE, False)
    }
    return create_model(
        f"{model.__name__}Triage",
        __base__=WireModel,
        __module__=__name__,
        __validators__=rules,
        **fields,
    )


def _check_sections(
    model: type[EventModel], triage: Mapping[str, Any], details: Mapping[str, Any] | None
) -> None:
    """Refuse sections that disagree on their version or hold a field of the other section.

    Personal data in triage would have reached the hub; the placement is checked at the current version
    only, since an older version's split is known to its upcaster alone.
    """
    version = triage.get(SHARED_FIELD, _FIRST_VERSION)
    if details is not None and details.get(SHARED_FIELD, _FIRST_VERSION) != version:
        raise _section_error(model, (SHARED_FIELD,), "the two sections give different schema versions")
    if version != _current_version(model):
        return
    for name in triage:
        if name not in model.TRIAGE_FIELDS and name != SHARED_FIELD:
            raise _section_error(model, ("triage", name), "this field does not belong in the triage section")
    for name in details or {}:
        if name in model.TRIAGE_FIELDS:
            raise _section_error(model, ("details", name), "this field belongs in the triage section")


def _section_error(model: type[EventModel], loc: tuple[str, ...], message: str) -> ValidationError:
    return _error(model, "section_mismatch", message, loc)


@overload
def join_sections(event_type: str, triage: Mapping[str, Any], details: None = None) -> dict[str, Any]: ...
@overload
def join_sections(event_type: str, triage: Mapping[str, Any], details: Mapping[str, Any]) -> EventModel: ...
def join_sections(
    event_type: str, triage: Mapping[str, Any], details: Mapping[str, Any] | None = None
) -> dict[str, Any] | EventModel:
    """Rebuild what a recipient may read: the whole event from both sections, or the triage alone.

    A triage-only recipient (such as the hub) gets a dict of the triage fields, upcast and checked
    against the model's triage constraints and rules; the full model is not validated, as the details
    are missing. Fields in the wrong section are rejected with a ``ValidationError``.
    """
    model = event_model(event_type)
    if details is None:
        upcast_triage = upcast(event_type, triage)
        _check_sections(model, upcast_triage, None)
        return _validate(_triage_model(model), upcast_triage).model_dump(mode="json")
    _check_sections(model, triage, details)
    return _validate(model, upcast(event_type, {**details, **triage}))
