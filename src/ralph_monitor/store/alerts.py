"""The alerts' side of the database: evaluating the rules in one transaction with the outbox
rows they produce, and leasing due messages to deliver.

"Written in the same transaction that detects it": the facts are read, the new alerts and
their messages inserted and the cleared ones resolved in one transaction, under an advisory
lock, so several daemons on one database never send a message twice, and a crash between
detection and delivery loses nothing (the outbox is durable).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ralph_monitor import resources
from ralph_monitor.alerts import rules
from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError, StoreUnavailable
from ralph_monitor.store.connect import NamedRequest, conninfo, fetch_pipelined

log = logging.getLogger(__name__)

LOCK_KEY = "alerts"
REPORT_RULE = "morning_report"
LEASE_S = 120
"""A claimed message is retried after this long if its daemon never reports back."""

AlertKey = tuple[str, str]
"""(rule, subject): what identifies an alert."""


class AlertStore:
    """One connection of its own (sync; the alert service runs it in a worker thread)."""

    def __init__(self, settings: Settings, *, dsn: str) -> None:
        self._settings = settings
        self._dsn = dsn
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()
        """The evaluation and the delivery loops share the connection, one transaction at a time."""
        self._first_pass_at: datetime | None = None
        """The database's clock at this store's first evaluation: for rules.HOST_SILENT_S after
        it, this host's own health row may be old only because its daemon has just started."""
        self._fired: set[AlertKey] = set()
        """One-shot conditions that hold and are known to have fired (here or by another daemon):
        not asked about again while they hold. Only what is committed; as many as hold now."""

    def interrupt(self) -> None:
        """Cancel the statement in progress, if any (safe from any thread): at shutdown a query
        stuck behind someone else's lock must not hold the daemon."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel()
            except psycopg.Error:
                pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, work: Callable[[psycopg.Connection[dict[str, Any]]], Any]) -> Any:
        with self._lock:
            return self._run_locked(work)

    def _run_locked(self, work: Callable[[psycopg.Connection[dict[str, Any]]], Any]) -> Any:
        # Autocommit outside `transaction()`: the connection is never left idle in a transaction,
        # whose locks would hold up DDL (a migration) and everything queued behind it.
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(conninfo(self._settings, dsn=self._dsn), row_factory=dict_row,
                                             autocommit=True)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"alerts cannot reach PostgreSQL: {exc}") from exc
        conn = self._conn
        try:
            with conn.transaction():
                return work(conn)
        except psycopg.OperationalError as exc:
            conn.close()
            self._conn = None
            raise StoreUnavailable(f"alerts lost PostgreSQL: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"alerts: {exc}") from exc

    def evaluate(self, *, night: tuple[datetime, datetime], destinations: list[str]) -> tuple[int, int]:
        """Fire new conditions and resolve cleared ones, each with a message per destination;
        (fired, resolved). Another daemon evaluating at the same moment: (0, 0)."""

        def work(conn: psycopg.Connection[dict[str, Any]]) -> tuple[int, int, set[AlertKey]]:
            # One round trip: the lock first (the reads after it see what its last holder wrote).
            asked = {"lock": ("try_lock_projection", {"key": LOCK_KEY}), **self._facts(night),
                     "open": ("open_alerts", None)}
            rows = dict(zip(asked, fetch_pipelined(conn, list(asked.values()))))
            if not rows["lock"][0]["locked"]:
                return 0, 0, self._fired
            conditions = {(c.rule, c.subject): c for c in self._conditions(rows, night)}
            open_alerts = {(r["rule"], r["subject"]): r["id"] for r in rows["open"]}
            known = (self._fired & conditions.keys()) | _fired_before(conn, [
                key for key in conditions if key[0] in rules.ONE_SHOT and key not in open_alerts
                and key not in self._fired])
            fired = resolved = 0
            for key, condition in conditions.items():
                if key in open_alerts or key in known:
                    continue
                one_shot = condition.rule in rules.ONE_SHOT
                inserted = conn.execute(resources.query("insert_alert"), {
                    "rule": condition.rule, "subject": condition.subject, "title": condition.title,
                    "body": condition.body, "link": self._link(condition.path), "session_id": condition.session_id,
                    "one_shot": one_shot}).fetchone()
                if inserted is None:
                    continue
                fired += 1
                if one_shot:
                    known.add(key)
                self._queue(conn, inserted["id"], "firing", condition.title, self._with_link(
                    condition.body, condition.path), destinations)
            for key, alert_id in open_alerts.items():
                if key in conditions:
                    continue
                done = conn.execute(resources.query("resolve_alert"), {"id": alert_id}).fetchone()
                if done is not None:
                    resolved += 1
                    self._queue(conn, alert_id, "resolved", f"Resolved: {done['title']}",
                                f"No longer the case: {done['body']}", destinations)
            return fired, resolved, known

        fired, resolved, self._fired = self._run(work)  # known only once committed
        return fired, resolved

    def _facts(self, night: tuple[datetime, datetime]) -> dict[str, NamedRequest]:
        """The named queries the enabled rules read, by the name `_conditions` knows them by."""
        s = self._settings
        asked: dict[str, NamedRequest] = {"now": ("database_now", None)}  # the clock the rules' SQL uses
        if s.alerts_intervention_after_min > 0:
            asked["waiting"] = ("alert_waiting_requests", {"after_s": s.alerts_intervention_after_min * 60})
        if s.alerts_on_stall:
            asked["stalled"] = ("alert_stalled_sessions", None)
        if s.alerts_on_stuck:
            asked["stuck"] = ("alert_stuck_sessions", None)
        if s.alerts_on_failure:
            asked["failed"] = ("alert_failed_sessions", None)
        if s.budget_session_usd or s.budget_session_tokens:
            asked["costly"] = ("alert_costly_sessions", {"usd": Decimal(str(s.budget_session_usd)),
                                                         "tokens": s.budget_session_tokens})
        if s.budget_night_usd or s.budget_night_tokens:
            asked["night"] = ("alert_spend_between", {"start": night[0], "end": night[1]})
        if s.alerts_on_monitor_health:
            asked |= {"backup": ("alert_latest_backup", None), "hosts": ("monitor_hosts", None),
                      "failing": ("projection_failure_count", None)}
        return asked

    def _conditions(self, rows: dict[str, list[dict[str, Any]]], night: tuple[datetime, datetime]) -> list[rules.Condition]:
        """What holds now, from the rows of `_facts`."""
        s = self._settings
        now = rows["now"][0]["now"]
        found: list[rules.Condition] = []
        if "waiting" in rows:
            found += rules.waiting_requests(rows["waiting"], now)
        if "stalled" in rows:
            found += rules.stalled_sessions(rows["stalled"])
        if "stuck" in rows:
            found += rules.stuck_sessions(rows["stuck"])
        if "failed" in rows:
            found += rules.failed_sessions(rows["failed"])
        if "costly" in rows:
            found += rules.over_budget_sessions(rows["costly"], s)
        if "night" in rows:
            found += rules.over_budget_night(night[0], rows["night"][0]["cost_usd"], rows["night"][0]["tokens_used"], s)
        if "hosts" in rows:
            backup = rows["backup"][0] if rows["backup"] else None
            self._first_pass_at = self._first_pass_at or now
            starting = (now - self._first_pass_at).total_seconds() < rules.HOST_SILENT_S
            found += rules.monitor_health(rows["hosts"], latest_backup=backup["event_type"] if backup else None,
                                          failing_projections=rows["failing"][0]["failing"], now=now, settings=s,
                                          starting_host=s.host if starting else None)
        return found

    def _link(self, path: str | None) -> str | None:
        base = self._settings.alerts_dashboard_url
        return base.rstrip("/") + "/" + path if base and path else None

    def _with_link(self, body: str, path: str | None) -> str:
        link = self._link(path)
        return f"{body}\n{link}" if link else body

    @staticmethod
    def _queue(conn: psycopg.Connection[dict[str, Any]], alert_id: int | None, kind: str, title: str,
               body: str, destinations: list[str], *, body_format: str = "text") -> None:
        for destination in destinations:
            conn.execute(resources.query("insert_alert_message"), {
                "alert_id": alert_id, "kind": kind, "destination": destination, "title": title, "body": body,
                "body_format": body_format})

    def queue_report(self, *, subject: str, title: str, body: str, destinations: list[str],
                     again: bool = False) -> bool:
        """Queue the morning report (Markdown) to every destination, once per night even with
        several daemons (`again`: send it even if it went out already); whether it was queued.
        It waits for the alerts lock: a daemon evaluating the rules at that moment (every few
        seconds) must not make `ralph-monitor alert report --send` a silent no-op."""

        def work(conn: psycopg.Connection[dict[str, Any]]) -> bool:
            conn.execute(resources.query("lock_projection"), {"key": LOCK_KEY})
            if not again and _fired_before(conn, [(REPORT_RULE, subject)]):
                return False
            inserted = conn.execute(resources.query("insert_alert"), {
                "rule": REPORT_RULE, "subject": subject, "title": title, "body": body, "link": self._link("index.html"), "session_id": None,
                "one_shot": True}).fetchone()
            self._queue(conn, inserted["id"], "report", title, body, destinations, body_format="markdown")
            return True

        return self._run(work)

    def claim(self, *, limit: int) -> list[dict[str, Any]]:
        """Due messages, leased to this daemon for LEASE_S."""
        return self._run(lambda conn: conn.execute(resources.query("claim_alert_messages"),
                                                   {"limit": limit, "lease_s": LEASE_S}).fetchall())

    def record(self, message_id: int, error: str | None, *, give_up: bool = False) -> None:
        """The outcome of one delivery attempt."""

        def work(conn: psycopg.Connection[dict[str, Any]]) -> None:
            if error is None:
                conn.execute(resources.query("alert_message_sent"), {"id": message_id})
            else:
                conn.execute(resources.query("alert_message_failed"), {
                    "id": message_id, "error": error, "give_up": give_up,
                    "retry_s": self._settings.alerts_retry_after_s,
                    "give_up_s": self._settings.alerts_give_up_after_h * 3600})

        self._run(work)

    def queue_test(self, destination: str, title: str, body: str) -> int:
        """An outbox row for a test message (sent at once by `alert test`, recorded like any other)."""
        return self._run(lambda conn: conn.execute(resources.query("insert_alert_message"), {
            "alert_id": None, "kind": "test", "destination": destination, "title": title,
            "body": body, "body_format": "text"}).fetchone()["id"])


def _fired_before(conn: psycopg.Connection[dict[str, Any]], keys: list[AlertKey]) -> set[AlertKey]:
    """Which of these (rule, subject) pairs fired before: one round trip for all of them."""
    if not keys:
        return set()
    rows = conn.execute(resources.query("alerts_ever_fired"),
                        {"rules": [k[0] for k in keys], "subjects": [k[1] for k in keys]}).fetchall()
    return {(r["rule"], r["subject"]) for r in rows}
