"""`python -m ralph_monitor` runs the `ralph-monitor` command."""

import sys

from ralph_monitor.launcher import main

sys.exit(main())
