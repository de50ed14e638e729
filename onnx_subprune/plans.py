"""Plans: per-group kept counts (or kept channels) to apply to a model again.

Every JSON report is a plan: its ``groups`` list names each group (``group``) with its
``channels`` and, from ``prune``, the kept count ``k`` and channels ``kept``; a group without
``k`` or ``kept`` (an ``analyze`` report) keeps all its channels. A plan applies only to the
model it was made for: group names and channel counts must match (:meth:`Plan.match`).
Per-group keep fractions (``--group-keep GLOB=FRACTION``) override the counts of the groups
whose name matches.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from .errors import SubpruneError, quote
from .types import ChannelGroup


@dataclass(frozen=True)
class PlannedGroup:
    """One group of a plan: its name and channel count, the kept count, and the kept channels
    (sorted) when the plan lists them."""

    name: str
    channels: int
    k: int
    kept: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """Per-group kept counts read from a report (``source`` names it in messages)."""

    groups: tuple[PlannedGroup, ...]
    source: str
    path: str | None = None
    """The file it was read from (no output may replace it)."""

    def match(self, groups: Sequence[ChannelGroup]) -> tuple[list[int], list[tuple[int, ...] | None]]:
        """Kept counts and kept channels (None: chosen by the method) in the order of
        ``groups``; a one-line error naming the first group that differs."""
        planned = {g.name: g for g in self.groups}
        for group in groups:
            mine = planned.get(group.name)
            if mine is None:
                raise SubpruneError(f"{self.source}: the model's group {quote(group.name)} is not in the plan "
                                    f"(the plan was made for another model or other include/exclude patterns)")
            if mine.channels != group.channels:
                raise SubpruneError(f"{self.source}: group {quote(group.name)} has {mine.channels} channels in the "
                                    f"plan, {group.channels} in the model")
        names = {g.name for g in groups}
        extra = next((g.name for g in self.groups if g.name not in names), None)
        if extra is not None:
            raise SubpruneError(f"{self.source}: group {quote(extra)} is not a group of this model")
        return [planned[g.name].k for g in groups], [planned[g.name].kept for g in groups]


def read_plan(path: str | os.PathLike) -> Plan:
    """The plan in a JSON report file; every problem is a one-line :class:`SubpruneError`."""
    shown = os.fspath(path)
    source = f"plan {shown}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubpruneError(f"plan file not found: {shown}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())[:200]
        raise SubpruneError(f"cannot read {source}: {why}") from None
    return replace(plan_from_json(data, source), path=shown)


def plan_from_json(data: object, source: str = "plan") -> Plan:
    """A :class:`Plan` from a report's JSON (a dict with a ``groups`` list)."""
    entries = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SubpruneError(f"{source}: not a report of onnx-subprune (no 'groups' list)")
    groups, seen = [], set()
    for index, entry in enumerate(entries):
        where = f"{source}: groups[{index}]"
        if not isinstance(entry, dict):
            raise SubpruneError(f"{where} is not an object")
        name = entry.get("group", entry.get("producer"))
        channels = entry.get("channels")
        if not isinstance(name, str) or not _is_count(channels) or channels < 1:
            raise SubpruneError(f"{where} needs 'group' (a name) and 'channels' (a positive integer)")
        if name in seen:
            raise SubpruneError(f"{where}: group {quote(name)} appears twice")
        seen.add(name)
        groups.append(_planned(entry, name, channels, f"{source}: group {quote(name)}"))
    return Plan(tuple(groups), source)


def _planned(entry: dict, name: str, channels: int, where: str) -> PlannedGroup:
    k, kept = entry.get("k"), entry.get("kept")
    if kept is not None:
        if not isinstance(kept, list) or not kept or not all(_is_count(i) and 0 <= i < channels for i in kept):
            raise SubpruneError(f"{where}: 'kept' must list channel indices in [0, {channels})")
        if len(set(kept)) != len(kept):
            raise SubpruneError(f"{where}: 'kept' lists a channel twice")
        if k is not None and k != len(kept):
            raise SubpruneError(f"{where}: 'k' is {k} but 'kept' lists {len(kept)} channels")
        return PlannedGroup(name, channels, len(kept), tuple(sorted(kept)))
    if k is None:
        return PlannedGroup(name, channels, channels)
    if not _is_count(k) or not 1 <= k <= channels:
        raise SubpruneError(f"{where}: 'k' must be an integer in [1, {channels}], got {k!r}")
    return PlannedGroup(name, channels, k)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_group_keep(text: str) -> tuple[str, float]:
    """``"GLOB=FRACTION"`` -> ``(GLOB, FRACTION)`` with the fraction in (0, 1] (one-line error)."""
    pattern, sep, value = text.rpartition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not sep or not pattern or not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise SubpruneError(f"group keep {quote(text)} is not GLOB=FRACTION with a fraction in (0, 1] "
                            f"(e.g. '/conv1/*=0.25')")
    return pattern, fraction


def group_fractions(overrides: Sequence[tuple[str, float]], groups: Sequence[ChannelGroup]) -> list[float | None]:
    """Per group, the keep fraction of the last override whose glob matches its name (None: no
    override); a one-line error for a glob that matches no group."""
    result: list[float | None] = [None] * len(groups)
    for pattern, fraction in overrides:
        hits = [i for i, g in enumerate(groups) if fnmatch.fnmatchcase(g.name, pattern)]
        if not hits:
            names = ", ".join(quote(g.name) for g in groups[:4]) + (", ..." if len(groups) > 4 else "")
            raise SubpruneError(f"group keep: {quote(pattern)} matches no group (groups: {names})")
        for index in hits:
            result[index] = fraction
    return result
