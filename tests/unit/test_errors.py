"""Our errors: every exception class is a LianfangError, and the one-line summary of a ValidationError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from pydantic import BaseModel, ValidationError, model_validator

import schemas
import services
from services.kernel.errors import LianfangError, validation_summary

pytestmark = pytest.mark.unit


class Inner(BaseModel):
    age: int


class Outer(BaseModel):
    a: int
    b: int
    c: int
    inner: Inner

    @model_validator(mode="after")
    def _sum(self) -> Outer:
        if self.a + self.b != self.c:
            raise ValueError("c must be a + b")
        return self


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        Outer.model_validate(data)
    return raised.value


def test_each_error_is_named_by_its_dotted_path_and_never_repeats_the_value() -> None:
    text = validation_summary(_error({"a": "secret-a", "b": 1, "c": 1, "inner": {"age": "secret-age"}}))
    assert text.startswith("a: ")
    assert "; inner.age: " in text
    assert "secret" not in text


def test_errors_past_the_limit_are_counted_not_listed() -> None:
    error = _error({"a": "x", "b": "y", "c": "z", "inner": {}})
    assert validation_summary(error, limit=1).endswith(" (+3 more)")
    assert "more" not in validation_summary(error, limit=None)


def test_an_error_about_the_whole_value_is_named_as_asked_or_left_unnamed() -> None:
    error = _error({"a": 1, "b": 1, "c": 3, "inner": {"age": 1}})
    assert validation_summary(error, whole="(event)") == "(event): Value error, c must be a + b"
    assert validation_summary(error) == "Value error, c must be a + b"


def test_every_exception_class_of_the_project_is_a_lianfang_error() -> None:
    outside = []
    for package in (services, schemas):
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if module_info.name.endswith("__main__"):
                continue  # running one starts a service
            module = importlib.import_module(module_info.name)
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                    and not issubclass(value, LianfangError)
                ):
                    outside.append(f"{module.__name__}.{name}")
    assert outside == []
