"""The exception hierarchy: one root, one subclass per thing that can fail.

Callers catch `RalphMonitorError` at the edge (CLI, daemon start-up) and print its
message, which is written for an operator: it names the file, setting or fix.
"""


class RalphMonitorError(Exception):
    """Root of every error ralph-monitor raises on purpose."""


class ConfigError(RalphMonitorError):
    """The configuration file or a setting in it is unusable."""


class InvalidEvent(RalphMonitorError):
    """An input line is not a valid event; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StoreError(RalphMonitorError):
    """The database refused or could not be reached."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now (events go to the spool)."""


class SpoolError(RalphMonitorError):
    """The local durable spool could not be written or read."""


class ClusterError(RalphMonitorError):
    """The embedded PostgreSQL cluster could not be created, started or stopped."""


class ClientError(RalphMonitorError):
    """Sending an event to the daemon failed or was rejected."""


class MaintenanceError(RalphMonitorError):
    """A backup, restore or prune could not be done; the message says why and what to do."""


class UnknownSession(RalphMonitorError):
    """No session (or more than one) matches an id prefix."""


class RenderFailed(RalphMonitorError):
    """A dashboard render failed: in the render process (the message is its traceback), in a
    helper process, or writing the site; the published site is left as it was."""
