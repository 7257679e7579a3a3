"""The limiter script's arguments and answers, shared by the async and sync clients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from policies.engine.specs import LimitSpec

SCRIPT = (Path(__file__).parent / "limiter.lua").read_text()


@dataclass(frozen=True, slots=True)
class Crossing:
    limit: LimitSpec
    threshold: int
    used: int


@dataclass(slots=True)
class Decision:
    admitted: bool
    limits: Sequence[LimitSpec]
    charges: Sequence[int]
    used: list[int] = field(default_factory=list)
    reset_ms: list[int] = field(default_factory=list)
    denied: LimitSpec | None = None
    retry_ms: int = 0
    crossings: list[Crossing] = field(default_factory=list)
    degraded: bool = False  # Redis was unreachable and the limits' failure modes decided
    now_ms: int = 0  # the Redis time of the decision (an undo must use the same)
    waited_ms: float = 0.0  # how long a `wait` limit held the request

    @property
    def retry_seconds(self) -> float | None:
        """Seconds until the denying limit has room, or None if this request never fits."""
        if self.retry_ms < 0:
            return None
        return self.retry_ms / 1000

    def remaining(self, index: int) -> int:
        return max(self.limits[index].amount - self.used[index], 0)


def script_args(
    mode: str,
    request_id: str,
    limits: Sequence[LimitSpec],
    charges: Sequence[int],
    *,
    org_id: int,
    now_ms: int = 0,
) -> tuple[list[str], list[str | int]]:
    """The script's keys and arguments, under this process's Redis prefix and lease."""
    prefix = settings.TOLLGATE_REDIS_PREFIX
    lease_ms = int(settings.TOLLGATE_LIMIT_LEASE_SECONDS * 1000)
    keys: list[str] = []
    argv: list[str | int] = [mode, now_ms, request_id, lease_ms, len(limits)]
    for spec, charge in zip(limits, charges, strict=True):
        base = spec.counter_key(prefix, org_id)
        charge_class = spec.charge_class
        if charge_class == "h":
            keys += [f"{base}:c", f"{base}:h", f"{base}:a"]
        elif charge_class == "c":
            keys += [f"{base}:c", f"{base}:h"]
        else:
            keys.append(f"{base}:c")
        argv.append(f"{spec.wire},{charge}")
    return keys, argv


def slot_groups(limits: Sequence[LimitSpec], org_id: int) -> list[list[int]]:
    """Indices of the limits by Redis Cluster hash tag, the org's own group first."""
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(limits):
        groups.setdefault(spec.hash_tag(org_id), []).append(i)
    own = f"{{org:{org_id}}}"
    return sorted(groups.values(), key=lambda idx: limits[idx[0]].hash_tag(org_id) != own)


def merge(
    parts: list[tuple[list[int], Decision]], limits: Sequence[LimitSpec], charges: Sequence[int]
) -> Decision:
    """One decision from the decisions of several slot groups, in the limits' own order."""
    used = [0] * len(limits)
    reset = [0] * len(limits)
    merged = Decision(
        admitted=all(d.admitted for _i, d in parts),
        limits=limits,
        charges=charges,
        now_ms=parts[0][1].now_ms if parts else 0,
    )
    for indices, decision in parts:
        for j, i in enumerate(indices):
            if j < len(decision.used):
                used[i], reset[i] = decision.used[j], decision.reset_ms[j]
        merged.crossings += decision.crossings
        if not decision.admitted and merged.denied is None:
            merged.denied, merged.retry_ms = decision.denied, decision.retry_ms
    merged.used, merged.reset_ms = used, reset
    return merged


def parse(raw: list[int | bytes], limits: Sequence[LimitSpec], charges: Sequence[int]) -> Decision:
    marker = raw.index(b"#")
    admitted, denied, retry = int(raw[0]), int(raw[1]), int(raw[2])
    decision = Decision(
        admitted=bool(admitted), limits=limits, charges=charges, retry_ms=retry, now_ms=int(raw[3])
    )
    if denied:
        decision.denied = limits[denied - 1]
    body = raw[4:marker]
    decision.used = [int(v) for v in body[0::2]]
    decision.reset_ms = [int(v) for v in body[1::2]]
    tail = raw[marker + 1 :]
    for i in range(0, len(tail), 3):
        decision.crossings.append(
            Crossing(
                limit=limits[int(tail[i]) - 1], threshold=int(tail[i + 1]), used=int(tail[i + 2])
            )
        )
    return decision
