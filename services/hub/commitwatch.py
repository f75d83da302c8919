"""Whether the hub's group has stopped committing an inbox partition: pure bookkeeping, no faust and no
Kafka.

The hub's lag sampler reads, per inbox partition, the group's committed offset and the partition's end
(:func:`services.hub.app.sample_group_lag`). A partition is *stalled* once its committed offset has
not moved for ``stall_after_s`` while at least ``min_new`` records arrived after the moment it last
moved: an idle partition (nothing new to commit) is not stalled, however long it stays put. Each stall
is reported once (:meth:`CommitWatch.observe` returns True), and again only after the offset moves and
stalls anew. Soaks have caught faust's commits stopping this way after broker faults while the hub went
on applying leads (``docs/faults.md``); the report says what faust held for that partition.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Since:
    committed: int
    end: int  # the partition's end when ``committed`` was first seen
    at: float
    reported: bool = False


class CommitWatch:
    def __init__(self, stall_after_s: float = 60.0, min_new: int = 10) -> None:
        self.stall_after_s = stall_after_s
        self.min_new = min_new
        self._since: dict[int, _Since] = {}

    def observe(self, partition: int, committed: int, end: int, now: float) -> bool:
        """Record one sample of ``partition`` (its committed offset and end at ``now``, in seconds);
        True when it is newly stalled."""
        since = self._since.get(partition)
        if since is None or since.committed != committed:
            self._since[partition] = _Since(committed, end, now)
            return False
        stalled = now - since.at >= self.stall_after_s and end - since.end >= self.min_new
        if stalled and not since.reported:
            since.reported = True
            return True
        return False

    def again(self, partition: int, end: int, now: float) -> None:
        """Watch ``partition`` afresh from ``now`` (its end then ``end``), its committed offset where
        it is: after the hub read it again, a stall that goes on is reported again."""
        since = self._since.get(partition)
        if since is not None:
            self._since[partition] = _Since(since.committed, end, now)

    def stalled_for(self, partition: int, now: float) -> float:
        """How long ``partition``'s committed offset has stayed where it is (0 before any sample)."""
        since = self._since.get(partition)
        return 0.0 if since is None else now - since.at
