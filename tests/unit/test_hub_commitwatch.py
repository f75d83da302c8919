"""The hub's watch on its own commits: a partition whose committed offset stops moving while records
arrive after it is reported once, with what faust holds for it."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from intervaltree import IntervalTree

from services.hub.app import faust_commit_view
from services.hub.commitwatch import CommitWatch

pytestmark = pytest.mark.unit


def test_a_committed_offset_that_stays_put_while_records_arrive_is_reported_once_after_the_wait() -> None:
    watch = CommitWatch(stall_after_s=60, min_new=10)
    assert not watch.observe(0, committed=500, end=520, now=0)
    assert not watch.observe(0, committed=500, end=600, now=59), "not yet a minute"
    assert watch.observe(0, committed=500, end=600, now=61)
    assert watch.stalled_for(0, now=61) == 61
    assert not watch.observe(0, committed=500, end=700, now=120), "reported once"
    assert not watch.observe(0, committed=640, end=700, now=130), "it moved: a new wait starts"
    assert not watch.observe(0, committed=640, end=760, now=180)
    assert watch.observe(0, committed=640, end=760, now=191), "and a new stall is reported"


def test_a_partition_watched_afresh_after_it_was_read_again_is_reported_again_if_it_stays_put() -> None:
    watch = CommitWatch(stall_after_s=60, min_new=10)
    watch.observe(0, committed=500, end=520, now=0)
    assert watch.observe(0, committed=500, end=600, now=61)
    watch.again(0, end=600, now=61)  # the hub read its inbox again
    assert not watch.observe(0, committed=500, end=700, now=120), "not yet a minute since"
    assert watch.observe(0, committed=500, end=700, now=122)


def test_an_idle_partition_is_not_stalled_however_long_its_offset_stays() -> None:
    watch = CommitWatch(stall_after_s=60, min_new=10)
    watch.observe(1, committed=96, end=100, now=0)  # the last batch and markers, nothing new since
    assert not watch.observe(1, committed=96, end=100, now=3600)
    assert not watch.observe(1, committed=96, end=109, now=3700), "fewer than min_new arrived"
    assert watch.observe(1, committed=96, end=110, now=3800)


def test_each_partition_is_watched_on_its_own() -> None:
    watch = CommitWatch(stall_after_s=60, min_new=10)
    for p in (0, 1):
        watch.observe(p, committed=10, end=10, now=0)
    watch.observe(1, committed=30, end=40, now=30)
    assert watch.observe(0, committed=10, end=50, now=61)
    assert not watch.observe(1, committed=30, end=50, now=61)


def test_faust_s_view_of_a_partition_names_its_offsets_and_only_offsets() -> None:
    tp = TP("t.lianfang.inbox.hub.v1", 2)
    gaps: defaultdict[Any, IntervalTree] = defaultdict(IntervalTree)
    gaps[tp].addi(507, 508)
    gaps[tp].addi(511, 512)
    consumer = SimpleNamespace(
        _committed_offset=defaultdict(lambda: None, {tp: 504}),
        _read_offset=defaultdict(lambda: None, {tp: 900}),
        _acked=defaultdict(list, {tp: [510, 506, 508, 509]}),
        _gap=gaps,
    )
    view = faust_commit_view(SimpleNamespace(consumer=consumer), "t.lianfang.inbox.hub.v1", 2)  # type: ignore[arg-type]
    assert view == (
        "committed 504, read 900, 4 acknowledged from [506, 508, 509, 510], gaps [(507, 508), (511, 512)]"
    )
    assert faust_commit_view(SimpleNamespace(consumer=SimpleNamespace()), "t", 0) == (  # type: ignore[arg-type]
        "committed missing, read missing, 0 acknowledged from missing, gaps missing"
    )


def test_a_view_that_cannot_be_read_says_so_instead_of_stopping_the_sampler() -> None:
    from services.hub.app import _described

    def broken(partition: int) -> str:
        raise KeyError(partition)

    assert _described(broken, 1) == "unreadable (KeyError)"
    assert _described(None, 1) == "not asked"
    assert _described(lambda p: f"partition {p}", 1) == "partition 1"
