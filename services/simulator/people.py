"""Synthetic people for the simulator: Chinese names, resident ID numbers and phone numbers.

Everything comes from the caller's seeded ``random.Random``, so a seed gives the same people. ID
numbers have a real region code (mostly 顺义区 110113, some other places people move from), the birth
date of the person, a sequence whose parity gives the sex (odd: male) and a correct GB 11643 check
digit; they are valid-looking, not real. Phones are mainland mobiles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from services.kernel.pseudonym import id_check_digit

SURNAMES: Final = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
FEMALE_GIVEN: Final = "秀英桂芳玉兰丽敏静霞红梅燕娟艳萍婷雪琳慧颖欣怡佳蕾淑华洁晶莉倩茹月"
MALE_GIVEN: Final = "伟强磊军勇杰涛明超辉刚鹏华飞斌浩波宇建国平志亮林峰成东海龙"

# Region codes (first six digits): where the person's ID number was issued.
REGIONS: Final = (
    ("110113", 80),  # 北京市顺义区
    ("110105", 5),  # 北京市朝阳区
    ("110108", 3),  # 北京市海淀区
    ("130682", 3),  # 河北省定州市
    ("410526", 3),  # 河南省滑县
    ("510129", 2),  # 四川省大邑县
    ("230102", 2),  # 黑龙江省哈尔滨市道里区
    ("370102", 2),  # 山东省济南市历下区
)
MOBILE_PREFIXES: Final = (
    *("130", "131", "135", "136", "137", "138", "139"),
    *("150", "151", "152", "158", "159", "176", "177"),
    *("180", "181", "182", "185", "186", "187", "188", "189", "199"),
)


@dataclass(frozen=True, slots=True)
class SyntheticPerson:
    name: str
    female: bool
    birth: date
    id_number: str | None
    phone: str | None

    def age_at(self, day: date) -> int:
        return day.year - self.birth.year - ((day.month, day.day) < (self.birth.month, self.birth.day))

    def as_person(self, at: date, **extra: Any) -> dict[str, Any]:
        """The person as a lead's ``victim`` or suspect (JSON-ready), with their age at ``at``."""
        age = self.age_at(at)
        out: dict[str, Any] = {
            "name": self.name,
            "sex": "female" if self.female else "male",
            "age": age,
            "is_minor": age < 18,
        }
        if self.id_number:
            out["id_number"] = self.id_number
        if self.phone:
            out["phone"] = self.phone
        out.update(extra)
        return out


class PeopleFactory:
    """Makes synthetic people from a seeded random source; ID numbers never repeat."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._ids: set[str] = set()
        self._phones: set[str] = set()

    def name(self, *, female: bool) -> str:
        given = FEMALE_GIVEN if female else MALE_GIVEN
        length = 2 if self.rng.random() < 0.7 else 1
        return self.rng.choice(SURNAMES) + "".join(self.rng.choice(given) for _ in range(length))

    def id_number(self, birth: date, *, female: bool) -> str:
        region = self.rng.choices([r for r, _ in REGIONS], weights=[w for _, w in REGIONS])[0]
        while True:
            sequence = self.rng.randrange(0, 500) * 2 + (0 if female else 1)
            first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
            number = first17 + id_check_digit(first17)
            if number not in self._ids:
                self._ids.add(number)
                return number

    def phone(self) -> str:
        while True:
            number = self.rng.choice(MOBILE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"
            if number not in self._phones:
                self._phones.add(number)
                return number

    def person(
        self,
        *,
        at: date,
        age: int,
        female: bool,
        id_share: float = 0.85,
        phone_share: float = 0.9,
    ) -> SyntheticPerson:
        """Someone aged ``age`` on ``at``; identifiable by an ID number or a phone (at least one)."""
        birth = at - timedelta(days=age * 365 + age // 4 + self.rng.randrange(1, 364))
        has_id = self.rng.random() < id_share
        has_phone = self.rng.random() < phone_share or not has_id
        return SyntheticPerson(
            name=self.name(female=female),
            female=female,
            birth=birth,
            id_number=self.id_number(birth, female=female) if has_id else None,
            phone=self.phone() if has_phone and age >= 12 else None if has_id else self.phone(),
        )
