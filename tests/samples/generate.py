"""(Re)create the sample export files of the six import formats, deterministically.

    .venv/bin/python tests/samples/generate.py            # writes next to this script
    .venv/bin/python tests/samples/generate.py --out DIR  # writes elsewhere (the tests compare)
    .venv/bin/python tests/samples/generate.py --large 100000 --out /tmp  # a big hotline log

Every person is synthetic: names are a surname and 某 (张某某, 王某), ID numbers are made for 顺义区
(region 110113) with plausible birth dates and correct check digits, phones are 138xxxxxxxx. The
``*_with_errors`` files hold a few good rows and rows that are wrong in one way each, named in the
``bad`` column comment below each builder. A unit test regenerates the files and compares them
byte for byte, so edit this script, never the files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from services.kernel.pseudonym import id_check_digit  # noqa: E402

HERE = Path(__file__).resolve().parent
REGION = "110113"  # 北京市顺义区
SURNAMES = "张王李刘陈杨赵黄周吴徐孙马朱胡郭何高林罗"
TOWNS = [
    "胜利街道", "光明街道", "石园街道", "空港街道", "双丰街道", "旺泉街道", "仁和镇", "后沙峪镇", "天竺镇",
    "杨镇", "牛栏山镇", "南法信镇", "马坡镇", "北石槽镇", "北小营镇", "高丽营镇", "李桥镇", "李遂镇",
    "南彩镇", "北务镇", "大孙各庄镇", "张镇", "龙湾屯镇", "木林镇", "赵全营镇",
]  # fmt: skip
TODAY = date(2026, 10, 31)  # samples are dated before this day


class People:
    """Synthetic people from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._used: set[str] = set()

    def name(self, full: bool | None = None) -> str:
        surname = self.rng.choice(SURNAMES)
        full = self.rng.random() < 0.6 if full is None else full
        return surname + ("某某" if full else "某")

    def id_number(self, age: int, *, female: bool, at: date = TODAY) -> str:
        while True:
            birth = at - timedelta(days=365 * age + self.rng.randrange(30, 330))
            sequence = self.rng.randrange(0, 500) * 2 + (0 if female else 1)
            first17 = f"{REGION}{birth:%Y%m%d}{sequence:03d}"
            number = first17 + id_check_digit(first17)
            if number not in self._used:
                self._used.add(number)
                return number

    def phone(self) -> str:
        return "138" + "".join(str(self.rng.randrange(10)) for _ in range(8))

    def moment(self, *, days_back: int = 80) -> datetime:
        day = TODAY - timedelta(days=self.rng.randrange(1, days_back))
        return datetime(day.year, day.month, day.day, self.rng.randrange(7, 23), self.rng.randrange(60))

    def town(self) -> str:
        return self.rng.choice(TOWNS)


def wrong_check_digit(number: str) -> str:
    digits = "0123456789X"
    return number[:17] + digits[(digits.index(number[17]) + 1) % len(digits)]


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)  # Excel's dialect: commas, quotes where needed, CRLF
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in row])
    return out.getvalue()


# --------------------------------------------------------------------------- 12338 hotline

HOTLINE_HEADER = [
    "工单编号", "来电时间", "来电人姓名", "性别", "年龄", "身份证号", "联系电话", "所在镇街", "问题类别",
    "是否未成年", "事情经过", "嫌疑人姓名", "与来电人关系", "风险情况", "是否申请联席会商", "接线员", "处理意见",
]  # fmt: skip

HOTLINE_CASES = [
    ("家庭暴力", "丈夫", "来电人称丈夫酒后多次殴打，昨晚用皮带抽打致手臂淤青，孩子在场。咨询如何申请人身安全保护令。",
     "酗酒、儿童在场", "否"),
    ("家庭暴力", "丈夫", "来电人称丈夫近半年打骂越来越频繁，曾掐其脖子，并扬言离婚就杀了她。来电时情绪激动。",
     "掐脖子、扬言杀人、暴力升级", "是"),
    ("家庭暴力", "前夫", "离婚后前夫仍经常到单位和住处纠缠，跟踪骚扰，多次报警未果。", "跟踪骚扰、多次报警", "否"),
    ("家暴", "男友", "来电人与男友同居，男友限制其外出并没收手机，发生争执时推搡致其摔倒。", "无", "否"),
    ("性侵害", "熟人", "来电人称被同村熟人强行猥亵，尚未报警，担心名声，咨询取证和法律途径。", "性暴力", "否"),
    ("就业性别歧视", "用人单位", "来电人面试时被告知公司不招已婚未育女性，要求其承诺两年内不生育。", "", "否"),
    ("家庭暴力", "儿子", "老年来电人称儿子因索要钱财多次辱骂推搡，不给生活费。", "", "否"),
    ("监护缺失", "父亲", "来电人反映邻居家孩子长期独自在家，父亲外出打工，孩子经常吃不上饭。", "", "否"),
    ("其他", "", "来电人咨询离婚后子女抚养费变更问题。", "", "否"),
    ("家庭暴力", "丈夫", "来电人怀孕五个月，丈夫因琐事将其推倒，腹部疼痛，已就医。", "怀孕", "是"),
]  # fmt: skip


def hotline_rows(people: People, n: int, *, start: int = 1) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(n):
        category, relation, story, risk, joint = HOTLINE_CASES[i % len(HOTLINE_CASES)]
        minor_case = category == "监护缺失"
        age = people.rng.randrange(9, 16) if minor_case else people.rng.randrange(22, 70)
        female = not minor_case or people.rng.random() < 0.5
        when = people.moment()
        number = people.id_number(age, female=female, at=when.date())
        rows.append(
            [
                f"12338-2026{start + i:06d}",
                f"{when:%Y/%m/%d %H:%M}",
                people.name(),
                "女" if female else "男",
                age,
                number if people.rng.random() < 0.8 else "",
                people.phone(),
                people.town(),
                category,
                "是" if age < 18 else "否",
                story,
                people.name() if relation and people.rng.random() < 0.7 else "",
                relation,
                risk,
                joint,
                f"接线员{people.rng.randrange(1, 9):02d}",
                "已转区公安分局、镇街调解室" if category.startswith("家") else "已解答",
            ]
        )
    return rows


def hotline(people: People) -> str:
    return "\ufeff" + csv_text(HOTLINE_HEADER, hotline_rows(people, 20))


def hotline_with_errors(people: People) -> str:
    good = hotline_rows(people, 4, start=901)
    bad = hotline_rows(people, 8, start=951)
    bad[0][5] = wrong_check_digit(people.id_number(35, female=True))  # line 6: 身份证号 check digit
    bad[1][6] = "1380000"  # line 7: 联系电话 too short: imported as given, flagged
    bad[2][8] = "家务纠纷"  # line 8: 问题类别 not in the map
    bad[3][1] = "2026/13/45 25:00"  # line 9: 来电时间 not a date
    bad[4][2] = ""  # line 10: 来电人姓名 empty
    bad[5][4], bad[5][9] = 15, "否"  # line 11: 年龄 15 (from the ID: adult) - disagrees
    bad[6][7] = "朝阳区"  # line 12: 所在镇街 not in the district
    bad[7][5], bad[7][6] = "", ""  # line 13: no identifier at all: imported, under a pseudonym of its own
    return "\ufeff" + csv_text(HOTLINE_HEADER, good + bad)


# --------------------------------------------------------------------------- police

POLICE_HEADER = [
    "警情编号", "接警时间", "报警方式", "报警人", "报警人电话", "受害人姓名", "受害人性别", "受害人年龄",
    "受害人身份证号", "受害人电话", "发案地点所属镇街", "警情类别", "简要案情", "风险因素", "嫌疑人姓名",
    "嫌疑人身份证号", "嫌疑人电话", "双方关系", "是否出具告诫书", "告诫书出具时间", "处警单位",
]  # fmt: skip

POLICE_CASES = [
    ("家庭暴力", "配偶", "报警人称被丈夫殴打，民警到场见其面部红肿，嫌疑人承认因家务琐事动手。", "酗酒", True),
    ("殴打家庭成员", "儿子", "儿子醉酒后殴打父亲，邻居报警。", "酗酒", True),
    ("家庭暴力", "前配偶", "前夫持刀到报警人住处威胁，民警到场将其控制。", "持刀、扬言杀人", False),
    ("强奸", "熟人", "报警人称被网友约至宾馆后强奸，已立案侦查。", "性暴力", False),
    ("猥亵儿童", "邻居", "家长报警称孩子被邻居猥亵，已立案侦查。", "", False),
    ("家庭暴力", "同居关系", "同居男友因怀疑其与他人联系，扇其耳光并摔坏手机。", "", True),
    ("拐卖妇女", "陌生人", "群众举报某出租屋内有外地女子被限制人身自由。", "", False),
    ("虐待", "配偶", "报警人称长期被丈夫限制就医和经济来源，今日被锁在屋内。", "暴力升级", True),
]  # fmt: skip


def _station(town: str) -> str:
    short = town.removesuffix("街道").removesuffix("镇")
    return short if len(short) >= 2 else town


def police_rows(people: People, n: int, *, start: int = 1) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(n):
        category, relation, story, risk, letter = POLICE_CASES[i % len(POLICE_CASES)]
        child = category == "猥亵儿童"
        male_victim = relation == "儿子"
        age = people.rng.randrange(8, 14) if child else people.rng.randrange(20, 75)
        when = people.moment()
        suspect_age = people.rng.randrange(25, 60)
        suspect_id = (
            people.id_number(suspect_age, female=False, at=when.date()) if relation != "陌生人" else ""
        )
        reporter = people.name()
        town = people.town()
        rows.append(
            [
                f"J11011320{when:%y%m%d}{start + i:04d}",
                f"{when:%Y-%m-%d %H:%M:%S}",
                "110" if people.rng.random() < 0.8 else "来所报案",
                reporter,
                people.phone(),
                people.name(),
                "男" if male_victim else "女",
                age,
                people.id_number(age, female=not male_victim, at=when.date()),
                people.phone() if not child else "",
                town,
                category,
                story,
                risk,
                people.name() if relation != "陌生人" else "",
                suspect_id,
                "",
                relation,
                "是" if letter else "否",
                f"{when + timedelta(hours=people.rng.randrange(2, 30)):%Y-%m-%d %H:%M:%S}" if letter else "",
                f"顺义分局{_station(town)}派出所",
            ]
        )
    return rows


def police(people: People) -> str:
    return csv_text(POLICE_HEADER, police_rows(people, 16))


def police_with_errors(people: People) -> str:
    good = police_rows(people, 3, start=901)
    bad = police_rows(people, 5, start=951)
    bad[0][8] = "11011319900230123X"  # line 5: 受害人身份证号 birth date 1990-02-30: imported, flagged
    bad[1][15] = wrong_check_digit(bad[1][15] or people.id_number(40, female=False))  # line 6: suspect ID
    bad[2][11] = "噪音扰民"  # line 7: 警情类别 not in the map
    bad[3][10] = ""  # line 8: 发案地点所属镇街 empty
    bad[4][1] = "2026-10-3x"  # line 9: 接警时间 not a date
    return csv_text(POLICE_HEADER, good + bad)


# --------------------------------------------------------------------------- hospital (JSON Lines)

HOSPITAL_CASES = [
    ("疑似家暴", "左眼眶软组织挫伤，颈部可见指压痕。患者自述被丈夫掐颈。", "面部软组织挫伤", "丈夫"),
    ("疑似性侵", "会阴部撕裂伤，患者情绪低落，陪同家属不愿多谈。", "会阴撕裂伤", "不详"),
    ("否", "右手腕扭伤，自述骑车摔倒。", "腕关节扭伤", ""),
    ("疑似家暴", "背部多处条状淤青，新旧伤并存，自述“不小心摔的”。", "多发软组织挫伤", "丈夫"),
    ("疑似虐待", "患儿臀部及大腿多处陈旧性瘢痕和新鲜抽打伤。", "多发软组织损伤", "父亲"),
    ("否", "急性肠胃炎。", "急性胃肠炎", ""),
]  # fmt: skip

HOSPITALS = [
    ("北京市顺义区医院", "急诊科"),
    ("北京市顺义区妇幼保健院", "妇科"),
    ("北京市顺义区中医医院", "外科"),
]


def hospital_rows(people: People, n: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(n):
        suspicion, injury, diagnosis, relation = HOSPITAL_CASES[i % len(HOSPITAL_CASES)]
        child = suspicion == "疑似虐待"
        female = not child or i % 2 == 1
        age = people.rng.randrange(4, 12) if child else people.rng.randrange(19, 66)
        when = people.moment()
        hospital, department = HOSPITALS[i % len(HOSPITALS)]
        rows.append(
            {
                "就诊时间": f"{when:%Y-%m-%dT%H:%M:00+08:00}",
                "医院名称": hospital,
                "科室": "儿科" if child else department,
                "病历号": f"MZ{people.rng.randrange(10**7, 10**8)}",
                "患者姓名": people.name(),
                "性别": "女" if female else "男",
                "年龄": age,
                "证件号码": people.id_number(age, female=female, at=when.date()),
                "联系方式": people.phone() if not child else None,
                "所属镇街": people.town(),
                "伤情描述": injury,
                "初步诊断": diagnosis,
                "疑似家暴/性侵": suspicion,
                "致伤人": people.name() if relation and relation != "不详" else None,
                "与患者关系": relation or None,
                "接诊医生": people.name(full=False) + "医生",
                "是否报警": suspicion != "否" and people.rng.random() < 0.5,
            }
        )
    return rows


def jsonl_text(rows: Iterable[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def hospital(people: People) -> str:
    return jsonl_text(hospital_rows(people, 12))


def hospital_with_errors(people: People) -> str:
    rows = hospital_rows(people, 8)
    rows[0]["疑似家暴/性侵"] = "疑似家暴"  # lines 1-3 good
    rows[1]["疑似家暴/性侵"] = "疑似家暴"
    rows[3]["证件号码"] = wrong_check_digit(str(rows[3]["证件号码"]))  # line 4: 证件号码 check digit
    rows[4]["年龄"] = [7]  # line 5: 年龄 not a single value
    rows[5]["疑似家暴/性侵"] = "疑似家暴"
    rows[5]["就诊时间"] = "昨天下午"  # line 6: 就诊时间 not a date
    rows[6]["疑似家暴/性侵"] = "疑似家暴"
    del rows[6]["患者姓名"]  # line 7: 患者姓名 missing
    text = jsonl_text(rows).splitlines(keepends=True)
    text.insert(7, '{"就诊时间": "2026-10-01T10:00:00+08:00", "患者姓名": \n')  # line 8: not valid JSON
    return "".join(text)


# --------------------------------------------------------------------------- school

SCHOOL_HEADER = [
    "报告时间", "学校名称", "学段", "班级", "学生姓名", "性别", "年龄", "出生日期", "学生身份证号",
    "家长联系电话", "所在镇街", "线索类别", "发现情况", "涉嫌侵害人", "与学生关系", "是否申请联席会商",
    "报告人", "报告人电话",
]  # fmt: skip

SCHOOL_CASES = [
    ("疑似家暴", "父亲", "学生连续多日脸部有伤，称被父亲用衣架抽打。", "否"),
    ("校园性侵", "校外培训教师", "学生向班主任反映被校外培训班老师多次单独留下并触摸身体。", "是"),
    ("留守儿童监护缺失", "", "学生父母均在外地务工，由年迈祖母照看，长期缺课，衣着单薄。", "否"),
    ("疑似虐待", "继母", "学生手臂有烫伤痕迹，称被继母用烟头烫。", "否"),
    ("性侵害", "网友", "学生在网上结识成年网友后被约见面并遭侵害，家长尚不知情。", "是"),
]  # fmt: skip


def school_rows(people: People, n: int) -> list[list[object]]:
    rows: list[list[object]] = []
    schools = ["顺义区第一中学", "顺义区仁和中心小学", "顺义区牛栏山第二中学", "顺义区杨镇中心小学"]
    for i in range(n):
        category, relation, story, joint = SCHOOL_CASES[i % len(SCHOOL_CASES)]
        age = people.rng.randrange(7, 17)
        female = category not in ("留守儿童监护缺失",) or i % 2 == 0
        when = people.moment()
        number = people.id_number(age, female=female, at=when.date())
        birth = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
        rows.append(
            [
                f"{when:%Y-%m-%d %H:%M}",
                schools[i % len(schools)],
                "小学" if age < 12 else "初中" if age < 15 else "高中",
                f"{min(age - 6, 12)}年级{people.rng.randrange(1, 6)}班",
                people.name(),
                "女" if female else "男",
                age,
                f"{birth:%Y-%m-%d}",
                number if i % 4 != 2 else "",
                people.phone(),
                people.town(),
                category,
                story,
                people.name() if relation else "",
                relation,
                joint,
                people.name(full=False) + "老师",
                people.phone(),
            ]
        )
    return rows


def school(people: People) -> str:
    return csv_text(SCHOOL_HEADER, school_rows(people, 10))


def school_with_errors(people: People) -> str:
    rows = school_rows(people, 6)
    rows[2][8] = "110113201301011"  # line 4: 学生身份证号 15 digits: converted to 18
    rows[3][11] = "早恋"  # line 5: 线索类别 not in the map
    rows[4][12] = ""  # line 6: 发现情况 empty
    rows[5][6] = 30  # line 7: 年龄 30 but the birth date says a child
    return csv_text(SCHOOL_HEADER, rows)


# --------------------------------------------------------------------------- court

COURT_HEADER = [
    "案号", "申请日期", "申请人姓名", "申请人身份证号", "申请人电话", "申请人住所地镇街", "被申请人姓名",
    "被申请人身份证号", "被申请人电话", "双方关系", "申请事由", "是否紧急", "裁定日期", "裁定结果",
    "保护令措施", "有效期至", "承办法官",
]  # fmt: skip

COURT_GROUNDS = [
    "被申请人长期实施家庭暴力，近期持刀威胁，申请人面临现实危险。",
    "离婚诉讼期间被申请人多次跟踪、骚扰申请人及其亲属。",
    "被申请人酒后殴打申请人致轻微伤，有公安机关告诫书为证。",
]
COURT_TERMS = "禁止被申请人实施家庭暴力；禁止被申请人骚扰、跟踪、接触申请人及其相关近亲属"


def court_rows(people: People, n: int, *, start: int = 1) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(n):
        applied = people.moment(days_back=60).date()
        urgent = i % 3 == 0
        outcome = ("准予", "准予", "驳回", "", "撤回")[i % 5]
        decided = applied + timedelta(days=0 if urgent else people.rng.randrange(1, 3)) if outcome else None
        age = people.rng.randrange(24, 62)
        rows.append(
            [
                f"（2026）京0113民保令{start + i}号",
                f"{applied:%Y-%m-%d}",
                people.name(),
                people.id_number(age, female=True, at=applied),
                people.phone(),
                people.town(),
                people.name(),
                people.id_number(age + 3, female=False, at=applied) if i % 4 else "",
                people.phone() if i % 4 == 0 else "",
                "配偶" if i % 2 else "前配偶",
                COURT_GROUNDS[i % len(COURT_GROUNDS)],
                "是" if urgent else "否",
                f"{decided:%Y-%m-%d}" if decided and outcome != "撤回" else "",
                outcome,
                COURT_TERMS if outcome == "准予" else "",
                f"{decided + timedelta(days=182):%Y-%m-%d}" if decided and outcome == "准予" else "",
                people.name(full=False) + "法官",
            ]
        )
    return rows


def court(people: People) -> str:
    return csv_text(COURT_HEADER, court_rows(people, 10))


def court_with_errors(people: People) -> str:
    rows = court_rows(people, 5, start=901)
    rows[1][12] = "2026-09-01"
    rows[1][13] = ""  # line 3: 裁定日期 without 裁定结果
    rows[0][13], rows[0][15] = "准予", rows[0][12]  # line 2: 有效期至 not after 裁定日期
    rows[2][3], rows[2][4] = "", ""  # line 4: no applicant identifier
    rows[3][10] = ""  # line 5: 申请事由 empty
    rows[4][13], rows[4][12] = "同意", rows[4][1]  # line 6: 裁定结果 not in the map
    return csv_text(COURT_HEADER, rows)


# --------------------------------------------------------------------------- mediation (GB18030)

MEDIATION_HEADER = [
    "登记编号", "登记日期", "来源", "当事人姓名", "性别", "年龄", "身份证号", "电话", "镇街", "对方当事人",
    "双方关系", "纠纷类型", "是否涉及家暴", "纠纷简要情况", "调解情况", "调解员",
]  # fmt: skip

MEDIATION_CASES = [
    ("婚姻纠纷", "是", "配偶", "双方因经济问题长期争吵，男方曾动手打人。", "经调解双方达成和解，男方书面保证不再动手。"),
    ("赡养纠纷", "否", "子女", "老人要求子女按月支付赡养费。", "达成赡养协议。"),
    ("婚姻纠纷", "是", "配偶", "女方称男方赌博欠债后多次殴打她，要求离婚。", "调解不成，已引导其申请保护令并转介法律援助。"),
    ("邻里纠纷", "否", "", "因宅基地界线发生争执。", "现场调解成功。"),
    ("家庭纠纷", "是", "前配偶", "离婚后前夫以探视孩子为由多次上门辱骂、推搡。", "已告知报警和申请保护令途径，持续跟进。"),
    ("抚养纠纷", "否", "前配偶", "双方就孩子抚养费数额有争议。", "达成协议。"),
]  # fmt: skip


def mediation_rows(people: People, n: int, *, start: int = 1) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(n):
        kind, dv, relation, story, result = MEDIATION_CASES[i % len(MEDIATION_CASES)]
        age = people.rng.randrange(25, 70)
        when = people.moment().date()
        rows.append(
            [
                f"RH-2026-{start + i:04d}",
                f"{when.year}年{when.month}月{when.day}日",
                "来访" if i % 3 else "社区转介",
                people.name(),
                "女",
                age,
                people.id_number(age, female=True, at=when) if i % 5 else "",
                people.phone(),
                "仁和镇" if i % 4 else "",
                people.name() if relation else "",
                relation,
                kind,
                dv,
                story,
                result,
                people.name(full=False) + "调解员",
            ]
        )
    return rows


def mediation(people: People) -> bytes:
    return csv_text(MEDIATION_HEADER, mediation_rows(people, 12)).encode("gb18030")


def mediation_with_errors(people: People) -> bytes:
    rows = mediation_rows(people, 5, start=901)
    rows[0][12] = "不清楚"  # line 2: 是否涉及家暴 not yes/no
    rows[2][6], rows[2][7] = "", "12345"  # line 4: 电话 not a phone: imported as given, flagged
    return csv_text(MEDIATION_HEADER, rows).encode("gb18030")


# --------------------------------------------------------------------------- files

SAMPLES = {
    "hotline_12338.csv": hotline,
    "hotline_12338_with_errors.csv": hotline_with_errors,
    "police.csv": police,
    "police_with_errors.csv": police_with_errors,
    "hospital.jsonl": hospital,
    "hospital_with_errors.jsonl": hospital_with_errors,
    "school.csv": school,
    "school_with_errors.csv": school_with_errors,
    "court.csv": court,
    "court_with_errors.csv": court_with_errors,
    "mediation_gb18030.csv": mediation,
    "mediation_with_errors_gb18030.csv": mediation_with_errors,
}


def generate(out: Path) -> list[Path]:
    """Write every sample into ``out``; each file has its own seed, so editing one leaves the rest."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, build) in enumerate(SAMPLES.items()):
        content = build(People(seed=20261031 + index))
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        (out / name).write_bytes(data)
        written.append(out / name)
    return written


def large_hotline(rows: int) -> str:
    """A big hotline log (for trying the progress line and throughput), not checked in."""
    people = People(seed=7)
    return "\ufeff" + csv_text(HOTLINE_HEADER, hotline_rows(people, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: this one)")
    parser.add_argument(
        "--large", type=int, metavar="ROWS", help="write hotline_large.csv with ROWS rows only"
    )
    args = parser.parse_args(argv)
    if args.large:
        path = args.out / "hotline_large.csv"
        path.write_text(large_hotline(args.large), encoding="utf-8", newline="")
        print(path)
        return 0
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
