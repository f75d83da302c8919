"""The default district: its participants, what each may publish, and its sharing policy (as data).

The district is modelled on 顺义区 and its 25 towns and streets. A real deployment
edits the registry, not this module; ``lianfang init`` uses it to build a demo trust domain.
"""

from __future__ import annotations

from typing import Final

from schemas.registry import Match, Policy, Rule
from services.kernel import ids

# id, 中文名, English name
AGENCIES: Final[tuple[tuple[str, str, str], ...]] = (
    (ids.PLC, "区委政法委", "Political-Legal Affairs Commission"),
    ("police", "区公安局", "Public Security Bureau"),
    ("procuratorate", "区检察院", "People's Procuratorate"),
    (ids.COURT, "区法院", "People's Court"),
    ("womens_federation", "区妇联", "Women's Federation (12338 hotline)"),
    ("justice", "区司法局", "Justice Bureau"),
    ("health", "区卫健委", "Health Commission"),
    ("hrss", "区人力社保局", "Human Resources and Social Security Bureau"),
    ("education", "区教委", "Education Commission"),
    ("civil_affairs", "区民政局", "Civil Affairs Bureau"),
    ("social_work", "区委社会工委", "Social Work Committee"),
    ("trade_union", "区总工会", "Federation of Trade Unions"),
    (ids.HUB, "联席会议处理器", "Joint-meeting processors (operated for plc)"),
    (ids.COORDINATORS, "联席会议办公室", "Joint-meeting office (console users)"),
    (ids.ROUTER, "事件路由器", "Event router (operated for plc; signs its audit trail, reads no content)"),
)

# The 6 streets (街道) and 19 towns (镇) of the district: id, 中文名.
TOWNS: Final[tuple[tuple[str, str], ...]] = (
    ("shengli", "胜利街道"),
    ("guangming", "光明街道"),
    ("shiyuan", "石园街道"),
    ("konggang", "空港街道"),
    ("shuangfeng", "双丰街道"),
    ("wangquan", "旺泉街道"),
    ("renhe", "仁和镇"),
    ("houshayu", "后沙峪镇"),
    ("tianzhu", "天竺镇"),
    ("yangzhen", "杨镇"),
    ("niulanshan", "牛栏山镇"),
    ("nanfaxin", "南法信镇"),
    ("mapo", "马坡镇"),
    ("beishicao", "北石槽镇"),
    ("beixiaoying", "北小营镇"),
    ("gaoliying", "高丽营镇"),
    ("liqiao", "李桥镇"),
    ("lisui", "李遂镇"),
    ("nancai", "南彩镇"),
    ("beiwu", "北务镇"),
    ("dasungezhuang", "大孙各庄镇"),
    ("zhangzhen", "张镇"),
    ("longwantun", "龙湾屯镇"),
    ("mulin", "木林镇"),
    ("zhaoquanying", "赵全营镇"),
)

LEAD_TYPES: Final = (
    "lead.reported",
    "risk.assessed",
    "lead.acknowledged",
    "lead.action_taken",
    "lead.resolved",
)
ORDER_TYPES: Final = ("protection_order.requested", "protection_order.decided", "protection_order.breached")
MEETING_TYPES: Final = ("joint_meeting.alert", "joint_meeting.scheduled", "joint_meeting.concluded")
SUPERVISION_TYPES: Final = ("supervision.breach", "supervision.report")

# The founding agencies that hold the root keys (2 of 3 sign a registry).
ROOT_HOLDERS: Final = (ids.PLC, "procuratorate", "womens_federation")


def participants() -> list[tuple[str, str, str]]:
    """Every participant of the default district: the agencies and one mediation room per town."""
    rooms = [
        (f"mediation.{town}", f"{name}婚姻家庭纠纷调解室", f"{town.capitalize()} Mediation Room")
        for town, name in TOWNS
    ]
    return [*AGENCIES, *rooms]


def may_publish(participant_id: str) -> list[str]:
    """Which event types a participant may put on the bus."""
    if participant_id == ids.ROUTER:
        return []  # it only copies signed events; its key signs the checkpoints of its audit trail
    if participant_id == ids.HUB:
        return ["joint_meeting.alert", *SUPERVISION_TYPES]
    if participant_id == ids.COORDINATORS:
        return ["joint_meeting.scheduled", "joint_meeting.concluded", "lead.acknowledged"]
    types = [*LEAD_TYPES, "protection_order.requested", "protection_order.breached"]
    if participant_id == ids.COURT:
        types.append("protection_order.decided")
    return types


def _lead(name: str, description: str, when: Match, readers: list[str], hub: bool = True) -> Rule:
    """A rule for leads and their follow-ups: readers get both sections, the hub triage only."""
    return Rule(
        name=name,
        description=description,
        when=when,
        triage=[*readers, ids.HUB] if hub else readers,
        details=readers,
    )


LEADS: Final = [*LEAD_TYPES]


def default_policy(version: int = 1) -> Policy:
    """The default sharing policy. Each rule cites the duty it encodes."""
    return Policy(
        version=version,
        rules=[
            _lead(
                "minor_sexual_assault_or_abuse",
                "未成年人遭受性侵害、虐待: 强制报告, 立即 — police, procuratorate, civil affairs, women's "
                "federation and the hub at once (Law on the Protection of Minors, mandatory reporting).",
                Match(type=LEADS, category=["sexual_assault", "child_abuse"], minor=True),
                ["police", "procuratorate", "civil_affairs", "womens_federation"],
            ),
            _lead(
                "minor_school_related",
                "涉校 cases about a minor also go to the Education Commission.",
                Match(type=LEADS, minor=True, school_related=True),
                ["education"],
            ),
            _lead(
                "domestic_violence",
                "家庭暴力: police, women's federation and the town's mediation room "
                "(Anti-Domestic Violence Law).",
                Match(type=LEADS, category=["domestic_violence"]),
                ["police", "womens_federation", "$town_mediation"],
            ),
            _lead(
                "sexual_assault",
                "性侵害: police, procuratorate, women's federation, health (forensic and medical care).",
                Match(type=LEADS, category=["sexual_assault"]),
                ["police", "procuratorate", "womens_federation", "health"],
            ),
            _lead(
                "child_abuse",
                "虐待儿童: police, procuratorate, civil affairs (guardianship), women's federation.",
                Match(type=LEADS, category=["child_abuse"]),
                ["police", "procuratorate", "civil_affairs", "womens_federation"],
            ),
            _lead(
                "neglect_of_guardianship",
                "监护缺失: civil affairs, procuratorate (督促监护令), women's federation.",
                Match(type=LEADS, category=["neglect_of_guardianship"]),
                ["civil_affairs", "procuratorate", "womens_federation"],
            ),
            _lead(
                "trafficking",
                "拐卖: police, procuratorate, women's federation, civil affairs (shelter).",
                Match(type=LEADS, category=["trafficking"]),
                ["police", "procuratorate", "womens_federation", "civil_affairs"],
            ),
            _lead(
                "employment_discrimination",
                "就业性别歧视: HR and social security, trade union, women's federation, procuratorate "
                "(支持起诉).",
                Match(type=LEADS, category=["employment_discrimination"]),
                ["hrss", "trade_union", "womens_federation", "procuratorate"],
            ),
            _lead(
                "child_labour",
                "使用童工: HR and social security, police, procuratorate, education.",
                Match(type=LEADS, category=["child_labour"]),
                ["hrss", "police", "procuratorate", "education"],
            ),
            _lead(
                "other",
                "其他: the women's federation triages it.",
                Match(type=LEADS, category=["other"]),
                ["womens_federation"],
            ),
            _lead(
                "protection_orders",
                "人身安全保护令: court, police (enforcement), women's federation, and the hub (breaches).",
                Match(type=list(ORDER_TYPES)),
                [ids.COURT, "police", "womens_federation"],
            ),
            Rule(
                name="joint_meeting",
                description="联席会议: the office, the convening commission and the agencies involved.",
                when=Match(type=list(MEETING_TYPES)),
                triage=[ids.COORDINATORS, ids.PLC, ids.HUB, "$audience"],
                details=[ids.COORDINATORS, ids.PLC, "$audience"],
            ),
            Rule(
                name="supervision",
                description="工作督查: breaches to the office, the commission and the agency concerned.",
                when=Match(type=list(SUPERVISION_TYPES)),
                triage=[ids.COORDINATORS, ids.PLC, "$audience"],
                details=[ids.COORDINATORS, ids.PLC, "$audience"],
            ),
        ],
    )
