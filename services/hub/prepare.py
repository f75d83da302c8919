"""The hub's topics, made ready before its faust app starts: the four it reads exist with the hub's
partitions, and its tables' changelog topics are created with the same partitions.

Why before: faust creates a missing changelog topic while it starts and subscribes a moment later. A
broker lists a new topic in the metadata it serves only after the controller created it (tens of
milliseconds on an idle machine, longer under load); asked in between, it says the topic does not
exist. The group's assignment then counts the changelog with 0 partitions, and until the consumer's
next metadata refresh (minutes) faust refuses every table write with ``PartitionsMismatch``: the state
is not saved and the record is lost to the hub. Topics created here, and listed by every broker before
faust starts, leave nothing for faust to create and nothing for its metadata to miss.

The same check refuses a hub whose ``partitions`` setting differs from its topics' partitions, with a
message, where faust would refuse each table write.
"""

from __future__ import annotations

from collections.abc import Iterable

from faust.types import TopicT

from services.bus.cluster import TopicSpec, ensure_topics, wait_for_topics
from services.bus.security import KafkaSecuritySettings
from services.kernel import ids, topics
from services.kernel.errors import UsageError

__all__ = ["changelog_spec", "prepare_topics", "source_topics"]


def source_topics(names: topics.TopicNames) -> list[str]:
    """The topics the hub's agents read and its tables are written from: each must have the hub's
    partitions (``lianfang topics apply`` creates them)."""
    return [names.inbox(ids.HUB), names.hub_clock, names.hub_suspects, names.hub_serial, names.hub_links]


def changelog_spec(changelog: TopicT, replication: int) -> TopicSpec:
    """A table's changelog topic as faust would create it: its partitions, compacted."""
    cleanup = [flag for flag, on in (("compact", changelog.compacting), ("delete", changelog.deleting)) if on]
    configs = {str(k): str(v) for k, v in (changelog.config or {}).items()}
    if cleanup:
        configs["cleanup.policy"] = ",".join(cleanup)
    if replication >= 3:
        configs.setdefault("min.insync.replicas", "2")
    return TopicSpec(changelog.get_topic_name(), int(changelog.partitions or 0), replication, configs)


def prepare_topics(
    bootstrap: str,
    *,
    names: topics.TopicNames,
    changelogs: Iterable[TopicT],
    partitions: int,
    replication: int,
    security: KafkaSecuritySettings,
    timeout_s: float,
) -> dict[str, int]:
    """Wait for the hub's source topics, create its changelog topics, and wait until every broker lists
    them all; returns each topic's partitions. A :class:`UsageError` if any has other partitions than
    ``partitions``; a :class:`~services.kernel.errors.TransportError` if one is missing at the end."""
    found = wait_for_topics(bootstrap, source_topics(names), timeout_s=timeout_s, security=security)
    _check(found, partitions)  # before creating changelogs for a count the hub cannot run with
    specs = [changelog_spec(c, replication) for c in changelogs]
    found |= ensure_topics(bootstrap, specs, timeout_s=timeout_s, security=security)
    _check(found, partitions)  # a changelog made earlier for another count
    return found


def _check(found: dict[str, int], partitions: int) -> None:
    wrong = {name: n for name, n in sorted(found.items()) if n != partitions}
    if wrong:
        listed = ", ".join(f"{name} has {n}" for name, n in wrong.items())
        raise UsageError(
            f"the hub's partitions setting is {partitions} but {listed}: a table's changelog must have "
            "the partitions of every topic it is written from: set LIANFANG_HUB_PARTITIONS to the "
            "partitions of the hub's inbox (deploy/topics.toml)"
        )
