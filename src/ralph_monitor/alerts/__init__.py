"""Waking people: alert rules, their durable outbox, and delivery (Apprise URLs, a command).

`rules` decides what is true now (pure), the store side (`ralph_monitor.store.alerts`) records it with its
messages in one transaction, `delivery` sends one message, and `service` runs the two loops
in the daemon (evaluate every few seconds; deliver what is due, with retries and backoff),
beside ingestion and never in its way.
"""
