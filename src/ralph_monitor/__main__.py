"""`python -m ralph_monitor` runs the `ralph-monitor` command."""

import sys

from ralph_monitor.cli import monitor_main

sys.exit(monitor_main())
