"""What runs inside the agents: the client (`client`), its own spool while the daemon is away
(`spool`), the Claude Code hook (`hook`) and the loop wrapper (`loop`).

The import rule: these modules import only the standard library, each other, and
`ralph_monitor.errors` (exception classes that import nothing). Claude Code starts the hook
for every tool call, so its import time is the agent's time; a database driver, template
engine or scheduler would cost more than the whole hook does. The daemon side (store,
queries, dashboard, command line) may import this package, never the reverse.

`ralph_monitor.config` is not light (it imports `tomli_w` and validates every setting), so
it is never imported at module level: the hook reads the one key it needs with `tomllib`,
and only `client.resolve_socket_path` loads the config, lazily, for a Python caller that gave
no socket path. `tests/unit/test_agent_imports.py` imports each module in a fresh
interpreter and fails on anything else.
"""
