"""Limits as the engine sees them, and which ones apply to a request."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from policies.limit_rules import WINDOW_SECONDS

CALENDAR_SECONDS = {"calendar_day": 86400, "calendar_month": 31 * 86400}
KIND = {"calendar_day": "d", "calendar_month": "m", "none": "c"}
CLASS = {"requests": "n", "tokens": "h", "cost": "h", "concurrent": "c"}
SCOPE_CODE = {
    "global": "global",
    "org": "org",
    "org_feature": "feature",
    "feature": "feature",
    "api_key": "key",
}
WINDOW_CODE = {
    "second": "per_second",
    "minute": "per_minute",
    "hour": "per_hour",
    "day": "per_day",
    "calendar_day": "per_day",
    "calendar_month": "per_month",
    "none": "",
}


@dataclass(frozen=True, slots=True)
class LimitSpec:
    id: int
    scope: str
    metric: str
    window: str
    amount: int
    action: str
    max_wait_seconds: float | None
    failure_mode: str
    thresholds: str  # "80,100"
    default_output_tokens: int
    description: str
    org_id: int | None = None
    tier_id: int | None = None
    feature: str | None = None
    api_key_id: int | None = None
    api_key_name: str = ""

    @property
    def wire(self) -> str:
        """This limit as the script reads it (the request's charge is appended)."""
        monitor = "1" if self.action == "monitor" else "0"
        thresholds = self.thresholds.replace(",", ";")
        return (
            f"{self.kind},{self.window_ms},{self.amount},{self.charge_class},{monitor},{thresholds}"
        )

    @property
    def kind(self) -> str:
        return KIND.get(self.window, "r")

    @property
    def window_ms(self) -> int:
        return WINDOW_SECONDS.get(self.window, 0) * 1000

    @property
    def window_seconds(self) -> int:
        return WINDOW_SECONDS.get(self.window) or CALENDAR_SECONDS.get(self.window, 0)

    @property
    def charge_class(self) -> str:
        return CLASS[self.metric]

    @property
    def code(self) -> str:
        metric = "concurrent_requests" if self.metric == "concurrent" else self.metric
        parts = [SCOPE_CODE[self.scope], metric, WINDOW_CODE[self.window]]
        return "_".join(p for p in parts if p)

    def hash_tag(self, org_id: int) -> str:
        """Keys of one org share a Redis Cluster hash tag; shared counters get their own."""
        if self.scope == "global":
            return "{global}"
        if self.scope == "feature":
            return f"{{feature:{self.feature}}}"
        return f"{{org:{org_id}}}"

    def counter_key(self, prefix: str, org_id: int) -> str:
        return f"{prefix}:{self.hash_tag(org_id)}:L{self.id}"


@dataclass
class LimitIndex:
    """Every active limit, indexed for a fast ``applicable`` lookup."""

    global_limits: list[LimitSpec] = field(default_factory=list)
    by_org: dict[int, list[LimitSpec]] = field(default_factory=lambda: defaultdict(list))
    by_tier: dict[int, list[LimitSpec]] = field(default_factory=lambda: defaultdict(list))
    by_feature: dict[str, list[LimitSpec]] = field(default_factory=lambda: defaultdict(list))
    by_key: dict[int, list[LimitSpec]] = field(default_factory=lambda: defaultdict(list))
    _cache: dict[tuple[int, int | None, str, int], tuple[LimitSpec, ...]] = field(
        default_factory=dict
    )

    def add(self, spec: LimitSpec) -> None:
        if spec.scope == "global":
            self.global_limits.append(spec)
        elif spec.scope == "feature":
            self.by_feature[spec.feature or ""].append(spec)
        elif spec.scope == "api_key":
            self.by_key[spec.api_key_id or 0].append(spec)
        elif spec.tier_id is not None:
            self.by_tier[spec.tier_id].append(spec)
        else:
            self.by_org[spec.org_id or 0].append(spec)

    def applicable(
        self, *, org_id: int, tier_id: int | None, feature: str, key_id: int
    ) -> tuple[LimitSpec, ...]:
        cache_key = (org_id, tier_id, feature, key_id)
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        own = [
            s
            for s in self.by_org.get(org_id, ())
            if s.scope == "org" or (s.scope == "org_feature" and s.feature == feature)
        ]
        # A tier default applies unless the org has its own limit of the same shape.
        shapes = {(s.scope, s.feature, s.metric, s.window) for s in own}
        defaults = [
            s
            for s in self.by_tier.get(tier_id or 0, ())
            if (s.scope == "org" or (s.scope == "org_feature" and s.feature == feature))
            and (s.scope, s.feature, s.metric, s.window) not in shapes
        ]
        result = (
            *self.global_limits,
            *own,
            *defaults,
            *(self.by_feature.get(feature, ()) if feature else ()),
            *self.by_key.get(key_id, ()),
        )
        self._cache[cache_key] = result
        return result


def spec_from_limit(limit) -> LimitSpec:  # type: ignore[no-untyped-def]
    return LimitSpec(
        id=limit.pk,
        scope=limit.scope,
        metric=limit.metric,
        window=limit.window,
        amount=int(limit.amount),
        action=limit.action,
        max_wait_seconds=limit.max_wait_seconds,
        failure_mode=limit.failure_mode,
        thresholds=",".join(str(int(t)) for t in (limit.thresholds or [])),
        default_output_tokens=limit.default_output_tokens,
        description=limit.describe(),
        org_id=limit.org_id,
        tier_id=limit.tier_id,
        feature=limit.feature.name if limit.feature_id else None,
        api_key_id=limit.api_key_id,
        api_key_name=limit.api_key.name if limit.api_key_id else "",
    )


def load_limit_index() -> LimitIndex:
    from policies.models import Limit

    index = LimitIndex()
    for limit in Limit.objects.filter(is_active=True).select_related("feature", "api_key"):
        index.add(spec_from_limit(limit))
    return index
