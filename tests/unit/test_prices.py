"""The price table the import estimates costs with (agent.prices)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ralph_monitor.agent.prices import PriceTable, model_key


@pytest.mark.parametrize("spelled, key", [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-opus-4-6[1m]", "claude-opus-4-6"),
    ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
    ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
    ("Claude-Opus-4-1", "claude-opus-4-1"),
])
def test_models_are_found_however_transcripts_spell_them(spelled: str, key: str) -> None:
    assert model_key(spelled) == key and PriceTable().price(spelled) is not None


def test_an_estimate_prices_each_kind_of_token_and_the_cache_write_by_its_duration() -> None:
    table = PriceTable()
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000, "cache_creation_input_tokens": 2_000_000,
             "cache_read_input_tokens": 1_000_000,
             "cache_creation": {"ephemeral_5m_input_tokens": 1_000_000, "ephemeral_1h_input_tokens": 1_000_000}}
    # Sonnet 4.5: 3 in, 15 out, 3.75 per 5-minute write, 6 per 1-hour write, 0.30 read.
    assert table.estimate("claude-sonnet-4-5-20250929", usage) == pytest.approx(3 + 15 + 3.75 + 6 + 0.3)
    assert table.estimate("claude-sonnet-4-5", {**usage, "inference_geo": "us"}) == pytest.approx(28.05 * 1.1)
    # Haiku 5.5 past 100k prompt tokens: the long-prompt rates.
    assert table.estimate("claude-haiku-5-5", {"input_tokens": 1000, "output_tokens": 0}) == pytest.approx(0.0001)
    assert table.estimate("claude-haiku-5-5", {"input_tokens": 200_000, "output_tokens": 0}) == pytest.approx(0.1)
    assert table.estimate("gpt-5", usage) is None


def test_the_config_can_replace_and_add_prices(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."claude-sonnet-4-5"]\ninput = 1.0\noutput = 2.0\n'
                      '[models."my-proxy-model-20260101"]\ninput = 10\noutput = 20\ncache_read = 1\n')
    table = PriceTable.with_overrides(str(prices))
    assert table.estimate("claude-sonnet-4-5", {"input_tokens": 1_000_000, "output_tokens": 1_000_000}) == 3.0
    assert table.price("my-proxy-model").cache_write_5m == 12.5  # 1.25 x input when not given
    prices.write_text('[models."x"]\ninput = "cheap"\n')
    with pytest.raises(ValueError, match="needs numbers"):
        PriceTable.with_overrides(str(prices))
