"""Usage and cost figures for the admin's charts, ``GET /api/usage/`` and its CSV: requests,
tokens and cost per hour or day grouped by org, feature and model; top keys by spend; and
each budget's burn-down against its limit. Read from the per-minute rollups (and, for
keys, the usage records), always within the caller's scope."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour

from gateway.models import UsageRecord, UsageRollup
from gateway.params import FilterError, FilterNotFound, defuse_formula, iso_utc, parse_moment
from policies.models import Limit, Organization
from policies.selectors import AdminScope

GROUP_FIELDS = {"org": "org__slug", "feature": "feature", "model": "model"}
INTERVALS = {"hour": (TruncHour, timedelta(hours=1)), "day": (TruncDay, timedelta(days=1))}
# At most this many periods per answer: an hourly series of a year would be 8,760 rows
# per group and no chart can show it.
MAX_PERIODS = 1000
DEFAULT_RANGE = timedelta(days=7)
# Burn-down charts of one tier-default budget: one per org, for at most this many orgs.
MAX_BUDGET_ORGS = 20
PARAMS = ("from", "to", "interval", "group_by", "org", "feature", "model")
FIGURES = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd")
ZERO = Decimal(0)


@dataclass(frozen=True)
class UsageQuery:
    start: datetime
    end: datetime
    interval: str = "day"
    group_by: tuple[str, ...] = ()
    org: Organization | None = None
    feature: str = ""
    model: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def narrow(self, rows: QuerySet[Any], scope: AdminScope) -> QuerySet[Any]:
        """Rollups or usage records of the scope's orgs, with the query's filters."""
        rows = rows.filter(org__in=scope.orgs())
        if self.org is not None:
            rows = rows.filter(org=self.org)
        if self.feature:
            rows = rows.filter(feature=self.feature)
        if self.model:
            rows = rows.filter(model=self.model)
        return rows


def usage_query_parse(
    params: Mapping[str, Any], *, scope: AdminScope, now: datetime | None = None
) -> UsageQuery:
    """Validated parameters; a bad one raises FilterError naming it (another org: 404)."""

    def text(name: str) -> str:
        return str(params.get(name) or "").strip()

    now = now or datetime.now(UTC)
    end = parse_moment("to", text("to")) if text("to") else now
    if text("to") and len(text("to")) == 10:
        end += timedelta(days=1)  # a date: through the end of that day
    start = parse_moment("from", text("from")) if text("from") else end - DEFAULT_RANGE
    if start >= end:
        raise FilterError("to", f"must be after from ({iso_utc(start)}); got {iso_utc(end)}")
    interval = text("interval") or "day"
    if interval not in INTERVALS:
        raise FilterError("interval", f"must be hour or day, not {interval[:20]!r}")
    periods = (end - start) / INTERVALS[interval][1]
    if periods > MAX_PERIODS:
        raise FilterError(
            "interval",
            f"{interval} is too fine for this range: {int(periods):,} periods, at most "
            f"{MAX_PERIODS:,}; use interval=day or a shorter range",
        )
    group_by = tuple(g.strip() for g in text("group_by").split(",") if g.strip())
    unknown = [g for g in group_by if g not in GROUP_FIELDS]
    if unknown:
        raise FilterError(
            "group_by", f"unknown field {unknown[0][:40]!r}; use org, feature and/or model"
        )
    org = None
    if text("org"):
        org = scope.orgs().filter(slug=text("org")).first()
        if org is None:
            raise FilterNotFound("org", "no such organization")
    return UsageQuery(
        start=start,
        end=end,
        interval=interval,
        group_by=tuple(dict.fromkeys(group_by)),
        org=org,
        feature=text("feature")[:64],
        model=text("model")[:200],
        params={k: text(k) for k in PARAMS if text(k)},
    )


def usage_series(*, scope: AdminScope, query: UsageQuery) -> list[dict[str, Any]]:
    """One row per period and group, oldest first, with the figures summed."""
    trunc = INTERVALS[query.interval][0]
    # Aliased: "org" and the others are field names of the rollup itself.
    groups = {f"g_{name}": F(GROUP_FIELDS[name]) for name in query.group_by}
    rows = (
        query.narrow(
            UsageRollup.objects.filter(minute__gte=query.start, minute__lt=query.end), scope
        )
        .annotate(period=trunc("minute", tzinfo=UTC), **groups)
        .values("period", *groups)
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("period", *groups)
    )
    return [
        {
            "period": iso_utc(row["period"]),
            **{name: row[f"g_{name}"] or "" for name in query.group_by},
            "requests": row["requests"],
            "errors": row["errors"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cost_usd": _usd(row["cost_usd"]),
        }
        for row in rows
    ]


def usage_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {name: 0 for name in FIGURES}
    totals["cost_usd"] = ZERO
    for row in rows:
        for name in FIGURES:
            totals[name] += Decimal(row[name]) if name == "cost_usd" else row[name]
    totals["cost_usd"] = _usd(totals["cost_usd"])
    return totals


def usage_top_keys(
    *, scope: AdminScope, query: UsageQuery, limit: int = 10
) -> list[dict[str, Any]]:
    """The API keys that spent most in the range."""
    records = query.narrow(
        UsageRecord.objects.filter(
            created_at__gte=query.start, created_at__lt=query.end, api_key__isnull=False
        ),
        scope,
    )
    rows = (
        records.values("api_key_id", "api_key__name", "api_key__prefix", "org__slug")
        .annotate(
            requests=Count("id"),
            tokens=Coalesce(Sum("input_tokens"), 0) + Coalesce(Sum("output_tokens"), 0),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("-cost_usd", "api_key_id")[:limit]
    )
    return [
        {
            "key": f"{row['api_key__name']} (tg_{row['api_key__prefix']})",
            "org": row["org__slug"],
            "requests": row["requests"],
            "tokens": row["tokens"],
            "cost_usd": _usd(row["cost_usd"]),
        }
        for row in rows
    ]


def budget_burndown(
    *, scope: AdminScope, org: Organization | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Each cost limit in scope: spend accumulated over its current window against the limit,
    and the spend the window ends with at the current pace."""
    now = now or datetime.now(UTC)
    limits = Limit.objects.filter(is_active=True, metric=Limit.Metric.COST).select_related(
        "org", "feature", "tier", "api_key__org"
    )
    orgs = scope.orgs() if org is None else scope.orgs().filter(pk=org.pk)
    budgets = []
    for limit in limits.order_by("pk"):
        targets = budget_orgs(limit, orgs=orgs)
        if None in targets and not (scope.is_global and org is None):
            continue  # a counter of every org's spend: global staff only
        for target in targets[:MAX_BUDGET_ORGS]:
            budgets.append(_burndown(limit, target, now))
    return budgets


def budget_orgs(limit: Limit, *, orgs: QuerySet[Organization]) -> list[Organization | None]:
    """Whose spend a cost limit counts, among ``orgs``: its org (or its key's), each org of
    its tier that has no limit of its own, or ``[None]`` for a counter every org shares."""
    owner = limit.api_key.org if limit.api_key is not None else limit.org
    if owner is not None:
        return [owner] if orgs.filter(pk=owner.pk).exists() else []
    if limit.tier_id is None:
        return [None]
    overridden = Limit.objects.filter(
        tier__isnull=True,
        scope=limit.scope,
        feature=limit.feature,
        metric=limit.metric,
        is_active=True,
    ).values("org_id")
    return list(orgs.filter(tier_id=limit.tier_id).exclude(pk__in=overridden).order_by("slug"))


def _burndown(limit: Limit, org: Organization | None, now: datetime) -> dict[str, Any]:
    start, end = _window(limit, now)
    step = timedelta(days=1) if end - start > timedelta(days=2) else timedelta(hours=1)
    trunc = TruncDay if step == timedelta(days=1) else TruncHour
    spend: dict[datetime, Decimal] = {}
    if limit.api_key_id:
        records = UsageRecord.objects.filter(
            api_key_id=limit.api_key_id, created_at__gte=start, created_at__lt=now
        )
        for row in (
            records.annotate(period=trunc("created_at", tzinfo=UTC))
            .values("period")
            .annotate(cost=Sum("cost_usd"))
        ):
            spend[row["period"]] = row["cost"] or ZERO
    else:
        q = Q(minute__gte=start, minute__lt=now)
        if org is not None:
            q &= Q(org=org)
        if limit.feature_id:
            q &= Q(feature=limit.feature.name)  # type: ignore[union-attr]
        for row in (
            UsageRollup.objects.filter(q)
            .annotate(period=trunc("minute", tzinfo=UTC))
            .values("period")
            .annotate(cost=Sum("cost_usd"))
        ):
            spend[row["period"]] = row["cost"] or ZERO
    points = []
    total = ZERO
    moment = trunc_to(start, step)
    while moment <= now:
        total += spend.get(moment, ZERO)
        points.append({"period": iso_utc(moment), "spent_usd": _usd(total)})
        moment += step
    amount = Decimal(limit.amount) / Decimal(1_000_000)
    elapsed = (now - start).total_seconds()
    length = (end - start).total_seconds()
    projected = total * Decimal(length / elapsed) if elapsed > 0 else total
    return {
        "limit": limit.describe(),
        "limit_id": limit.pk,
        "org": org.slug if org is not None else None,
        "window_start": iso_utc(start),
        "window_end": iso_utc(end),
        "limit_usd": _usd(amount),
        "spent_usd": _usd(total),
        "used_ratio": float(total / amount) if amount else 0.0,
        "projected_usd": _usd(projected),
        "points": points,
    }


def _window(limit: Limit, now: datetime) -> tuple[datetime, datetime]:
    if limit.window == Limit.Window.CALENDAR_MONTH:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    elif limit.window == Limit.Window.CALENDAR_DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        from policies.limit_rules import WINDOW_SECONDS

        length = timedelta(seconds=WINDOW_SECONDS.get(limit.window, 86400))
        start, end = now - length, now
    return start, end


def trunc_to(moment: datetime, step: timedelta) -> datetime:
    if step >= timedelta(days=1):
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def usage_csv(rows: list[dict[str, Any]], group_by: tuple[str, ...]) -> Iterator[str]:
    """The series as CSV lines; text cells that a spreadsheet would run as formulas are
    prefixed with a quote."""
    columns = ["period", *group_by, *FIGURES]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([defuse_formula(row.get(c, "")) for c in columns])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


def _usd(value: Decimal | None) -> str:
    """USD as an exact decimal string (12 places stored; trailing zeros dropped)."""
    value = value or ZERO
    text = format(value.quantize(Decimal("0.000000000001")), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
