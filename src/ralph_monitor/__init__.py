"""ralph-monitor: every event of an overnight agent run, committed to PostgreSQL."""

__version__ = "0.1.0"
