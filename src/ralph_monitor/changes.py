"""What changed between two runs of a loop: `ralph-query diff`, the session page's "Since the
previous run" and the top of the morning report.

Pure: it compares the spec results (outcomes.py) of a baseline session with those of a later
one. Per spec, by its outcome in each session:

    newly failing   still failing now; passed before, or did not run before
    fixed           still failing before; completed now
    still failing   still failing in both
    flaky           failed or timed out, then passed on a retry, in the later session
    slower          its attempts took `threshold` percent longer in all (and at least MIN_SLOWER_S more)
    costlier        its attempts cost `threshold` percent more in all (and at least MIN_COSTLIER_USD more)

and the error messages of the later session that the baseline never showed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from ralph_monitor.outcomes import FIXED_ON_RETRY, PASSED, STILL_FAILING, Counts, SpecResult

THRESHOLD_PERCENT = 50.0
"""A spec is slower or costlier when it took this much more (percent of the baseline)."""
MIN_SLOWER_S = 30.0
MIN_COSTLIER_USD = Decimal("0.05")
"""Below these the difference is noise, whatever the percentage."""


@dataclass
class SpecChange:
    """One spec in both runs (`before` is None when the baseline did not run it)."""

    spec_id: str
    before: SpecResult | None
    now: SpecResult


@dataclass(frozen=True)
class NewError:
    error: str
    spec_ids: tuple[str, ...]


@dataclass(frozen=True)
class Changes:
    """The later session against its baseline, by category: each list in the order specs ran,
    but slower and costlier ones most grown first."""

    newly_failing: list[SpecChange] = field(default_factory=list)
    fixed: list[SpecChange] = field(default_factory=list)
    still_failing: list[SpecChange] = field(default_factory=list)
    flaky: list[SpecChange] = field(default_factory=list)
    slower: list[SpecChange] = field(default_factory=list)
    costlier: list[SpecChange] = field(default_factory=list)
    new_errors: list[NewError] = field(default_factory=list)
    before: Counts = Counts()
    now: Counts = Counts()
    not_run: list[str] = field(default_factory=list)
    """Specs of the baseline the later session did not run (yet)."""
    threshold_percent: float = THRESHOLD_PERCENT

    @property
    def anything(self) -> bool:
        """Whether any spec changed (still failing ones alone are no change)."""
        return bool(self.newly_failing or self.fixed or self.flaky or self.slower or self.costlier
                    or self.new_errors)

    def headline(self) -> str:
        """One line: "1 newly failing, 2 fixed, 1 flaky, 1 slower, 1 new error" (or "no change")."""
        parts = [f"{len(items)} {word}" for items, word in (
            (self.newly_failing, "newly failing"), (self.fixed, "fixed"), (self.still_failing, "still failing"),
            (self.flaky, "flaky"), (self.slower, "slower"), (self.costlier, "costlier"),
            (self.new_errors, "new error" if len(self.new_errors) == 1 else "new errors")) if items]
        return ", ".join(parts) if parts else "no change"


def _grew(now: float, before: float, percent: float, floor: float) -> bool:
    return now >= before * (1 + percent / 100) and now - before >= floor


def _growth(now: float | Decimal | None, before: float | Decimal | None) -> float:
    return float(now or 0) / float(before) if before else float("inf")


def compare(baseline: Sequence[SpecResult], later: Sequence[SpecResult], *,
            threshold_percent: float = THRESHOLD_PERCENT) -> Changes:
    """What changed from `baseline` (one session's spec results) to `later` (another's)."""
    before = {r.spec_id: r for r in baseline}
    ran = {r.spec_id for r in later}
    changes = Changes(before=Counts.tally(r.outcome for r in baseline), now=Counts.tally(r.outcome for r in later),
                      not_run=[spec for spec in before if spec not in ran], threshold_percent=threshold_percent)
    passed = (PASSED, FIXED_ON_RETRY)
    for now in later:
        old = before.get(now.spec_id)
        slower = costlier = False
        if old is not None and now.ended_at is not None and old.ended_at is not None:
            slower = (now.duration_seconds is not None and old.duration_seconds is not None
                      and _grew(now.duration_seconds, old.duration_seconds, threshold_percent, MIN_SLOWER_S))
            costlier = _grew(float(now.cost_usd), float(old.cost_usd), threshold_percent, float(MIN_COSTLIER_USD))
        failing_before = old is not None and old.outcome in STILL_FAILING
        if not (now.outcome in STILL_FAILING or failing_before or now.outcome == FIXED_ON_RETRY or slower or costlier):
            continue  # passed both times, neither slower nor costlier: most specs of most nights
        change = SpecChange(now.spec_id, old, now)
        if now.outcome in STILL_FAILING:
            (changes.still_failing if failing_before else changes.newly_failing).append(change)
        elif failing_before and now.outcome in passed:
            changes.fixed.append(change)
        if now.outcome == FIXED_ON_RETRY:
            changes.flaky.append(change)
        if slower:
            changes.slower.append(change)
        if costlier:
            changes.costlier.append(change)
    changes.slower.sort(key=lambda c: -_growth(c.now.duration_seconds, c.before.duration_seconds if c.before else None))
    changes.costlier.sort(key=lambda c: -_growth(c.now.cost_usd, c.before.cost_usd if c.before else None))
    seen = {error for r in baseline for error in r.errors}
    fresh: dict[str, list[str]] = {}
    for r in later:
        for error in r.errors:
            if error not in seen:
                fresh.setdefault(error, []).append(r.spec_id)
    changes.new_errors.extend(NewError(error, tuple(specs)) for error, specs in fresh.items())
    return changes
