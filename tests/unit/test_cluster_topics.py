"""Creating topics in one request: what the controller's answer means for each topic."""

from __future__ import annotations

import pytest
from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from services.bus.cluster import raise_unless_created_or_existing

pytestmark = pytest.mark.unit


def test_an_answer_where_each_topic_was_created_or_already_existed_raises_nothing() -> None:
    raise_unless_created_or_existing(
        {
            "topics": [
                {"name": "a", "error_code": 0, "error_message": None},
                {"name": "b", "error_code": TopicAlreadyExistsError.errno, "error_message": "exists"},
            ]
        }
    )


def test_an_answer_with_another_error_for_one_topic_raises_that_error_naming_the_topic() -> None:
    answer = {
        "topics": [
            {"name": "a", "error_code": 0, "error_message": None},
            {
                "name": "b",
                "error_code": InvalidReplicationFactorError.errno,
                "error_message": "only 1 broker",
            },
        ]
    }
    with pytest.raises(InvalidReplicationFactorError, match="b: only 1 broker"):
        raise_unless_created_or_existing(answer)
