"""The price table `ralph-monitor import claude-code` estimates costs with, where a transcript
does not say what a request cost.

Prices are USD per million tokens, as Claude Code 2.1.328 lists them in its own model catalog
(public list prices, first-party API) on PRICES_DATE. A cache write costs the 5-minute or the
1-hour rate by what `usage.cache_creation` says of it (all at the 5-minute rate when it does
not say), and a request with more than `long_prompt.above` prompt tokens is priced at the
`long_prompt` rates where a model has them. An estimate is labelled as one (`cost_source:
estimate`) wherever it is stored.

`[import] prices_file` in the config names a TOML file whose entries replace or add to these:

    [models."claude-sonnet-4-5"]
    input = 3.0
    output = 15.0
    cache_write_5m = 3.75
    cache_write_1h = 6.0
    cache_read = 0.3

Standard library only (see `ralph_monitor.agent`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

PRICES_DATE = "2026-11-28"
PRICES_SOURCE = "Claude Code 2.1.328 model catalog (list prices, first-party API)"
MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    long_prompt_above: int | None = None
    long_prompt: Price | None = None


def _tier(i: float, o: float, w5: float, w1: float, r: float) -> Price:
    return Price(i, o, w5, w1, r)


TIER_3_15 = _tier(3, 15, 3.75, 6, 0.3)
TIER_5_25 = _tier(5, 25, 6.25, 10, 0.5)
TIER_15_75 = _tier(15, 75, 18.75, 30, 1.5)
PRICES: dict[str, Price] = {
    "claude-3-haiku": _tier(0.25, 1.25, 0.3, 0.5, 0.03),
    "claude-3-5-haiku": _tier(0.8, 4, 1, 1.6, 0.08),
    "claude-haiku-4-5": _tier(1, 5, 1.25, 2, 0.1),
    "claude-haiku-5-5": Price(0.1, 0.5, 0.125, 0.2, 0.01, 100_000, _tier(0.5, 2.5, 0.625, 1, 0.05)),
    "claude-3-opus": TIER_15_75,
    "claude-3-5-sonnet": TIER_3_15,
    "claude-3-7-sonnet": TIER_3_15,
    "claude-sonnet-4": TIER_3_15,
    "claude-sonnet-4-0": TIER_3_15,
    "claude-sonnet-4-5": TIER_3_15,
    "claude-sonnet-4-6": TIER_3_15,
    "claude-sonnet-5": _tier(2, 10, 2.5, 4, 0.2),
    "claude-sonnet-5-5": _tier(2, 10, 2.5, 4, 0.1),
    "claude-opus-4": TIER_15_75,
    "claude-opus-4-0": TIER_15_75,
    "claude-opus-4-1": TIER_15_75,
    "claude-opus-4-5": TIER_5_25,
    "claude-opus-4-6": TIER_5_25,
    "claude-opus-4-7": TIER_5_25,
    "claude-opus-4-8": TIER_5_25,
    "claude-opus-5": TIER_5_25,
    "claude-opus-5-5": _tier(4, 20, 5, 8, 0.2),
    "claude-fable-5": _tier(10, 50, 12.5, 20, 1),
    "claude-fable-5-1": _tier(10, 50, 12.5, 20, 0.25),
    "claude-fable-5-2": _tier(8, 40, 10, 16, 0.2),
    "claude-mythos-5": _tier(10, 50, 12.5, 20, 1),
    "claude-mythos-5-1": _tier(10, 50, 12.5, 20, 0.25),
    "claude-mythos-5-2": _tier(8, 40, 10, 16, 0.2),
}
_DATED = re.compile(r"-(?:\d{8}|latest)$")
_PROVIDER_PREFIX = re.compile(r"^(?:[a-z]{2}\.)?(?:anthropic[./])?")
_VERSION_SUFFIX = re.compile(r"(?:-v\d+(?::\d+)?|@\d{8})$")


def model_key(model: str) -> str:
    """The table's name for a model as transcripts spell it: without a date, a `[1m]`
    context suffix, or a cloud provider's prefix and version (`us.anthropic.…-v1:0`)."""
    name = model.strip().lower()
    name = name.split("[", 1)[0]
    name = _PROVIDER_PREFIX.sub("", name)
    name = _VERSION_SUFFIX.sub("", name)
    return _DATED.sub("", name)


class PriceTable:
    """Looks prices up by model; `estimate` prices one request's usage."""

    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self.prices = dict(PRICES if prices is None else prices)

    @classmethod
    def with_overrides(cls, path: str | None) -> PriceTable:
        """The shipped table, with the entries of the TOML file at `path` (see the module doc)
        replacing or adding models. Raises ValueError naming what is wrong in the file."""
        table = cls()
        if not path:
            return table
        with open(path, "rb") as source:
            models = tomllib.load(source).get("models")
        if not isinstance(models, dict):
            raise ValueError(f"{path}: no [models.\"NAME\"] tables")
        for name, fields in models.items():
            table.prices[model_key(name)] = _price(path, name, fields)
        return table

    def price(self, model: str) -> Price | None:
        return self.prices.get(model_key(model))

    def estimate(self, model: str, usage: dict[str, Any]) -> float | None:
        """USD for one request's `usage` (the API's usage object); None for an unknown model."""
        price = self.price(model)
        if price is None:
            return None
        counts = {k: usage.get(k) if isinstance(usage.get(k), int) else 0 for k in (
            "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
        prompt = counts["input_tokens"] + counts["cache_creation_input_tokens"] + counts["cache_read_input_tokens"]
        if price.long_prompt is not None and price.long_prompt_above is not None and prompt > price.long_prompt_above:
            price = price.long_prompt
        split = usage.get("cache_creation")
        one_hour = split.get("ephemeral_1h_input_tokens") if isinstance(split, dict) else 0
        one_hour = min(max(one_hour if isinstance(one_hour, int) else 0, 0), counts["cache_creation_input_tokens"])
        cost = (counts["input_tokens"] * price.input + counts["output_tokens"] * price.output
                + (counts["cache_creation_input_tokens"] - one_hour) * price.cache_write_5m
                + one_hour * price.cache_write_1h + counts["cache_read_input_tokens"] * price.cache_read) / MILLION
        if usage.get("inference_geo") == "us":
            cost *= 1.1  # US-only inference is billed at 1.1 times the list price
        return cost


def _price(path: str, name: str, fields: Any) -> Price:
    keys = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), (int, float)) for k in keys[:2]):
        raise ValueError(f"{path}: [models.\"{name}\"] needs numbers for input and output (USD per million tokens)")
    values = {k: float(fields.get(k, 0)) for k in keys}
    if "cache_write_5m" not in fields:
        values["cache_write_5m"] = values["input"] * 1.25
    if "cache_write_1h" not in fields:
        values["cache_write_1h"] = values["input"] * 2
    if "cache_read" not in fields:
        values["cache_read"] = values["input"] * 0.1
    return Price(**values)
