"""The validator accepts a JSON number exactly when PostgreSQL's jsonb does: near every limit
of numeric (digits before and after the point, exponents), asked of a real server."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import psycopg

from ralph_monitor.errors import InvalidEvent
from ralph_monitor.protocol import Origin, parse_line

CASES = 1500


def number_near_the_limits(rng: random.Random) -> str:
    integer = rng.choice(["0", "1", "12", "9" * rng.randrange(1, 40), "0" * rng.randrange(1, 4) + "7"])
    fraction = rng.choice(["", ".0", ".5", "." + "0" * rng.randrange(0, 30) + str(rng.randrange(1000))])
    exponent = rng.choice([
        "", f"e{rng.randrange(131_030, 131_110)}", f"E+{rng.randrange(131_030, 131_110)}",
        f"e-{rng.randrange(16_340, 16_420)}", f"e{rng.randrange(0, 400)}",
        f"e{rng.randrange(1_073_741_800, 1_073_741_830)}", f"e-{rng.randrange(1_073_741_800, 1_073_741_830)}"])
    return rng.choice(["", "-"]) + integer + fraction + exponent


def postgresql_accepts(conn: psycopg.Connection, text: str) -> bool:
    try:
        conn.execute("SELECT %s::jsonb", (text,))
    except psycopg.errors.DataError:
        return False
    return True


def daemon_accepts(text: str) -> bool:
    line = ('{"type":"spec_completed","data":{"cost_usd":%s}}' % text).encode()
    try:
        parse_line(line, received_at=datetime.now(timezone.utc), origin=Origin(host="h", uid=0, pid=0))
    except InvalidEvent as error:
        assert error.code in ("invalid_number", "invalid_json"), (text, error)
        return False
    return True


def test_numbers_are_judged_as_postgresql_judges_them(db_dsn: str) -> None:
    rng = random.Random(20261125)
    numbers = [number_near_the_limits(rng) for _ in range(CASES)]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        verdicts = [(n, postgresql_accepts(conn, n), daemon_accepts(n)) for n in numbers]
    differ = [(n[:50], pg, ours) for n, pg, ours in verdicts if pg != ours]
    assert differ == []
    accepted = sum(pg for _, pg, _ in verdicts)
    assert 0.2 * CASES < accepted < 0.8 * CASES, "the cases must sit on both sides of the limits"
