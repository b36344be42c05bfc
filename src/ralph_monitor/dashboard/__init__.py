"""The static dashboard: HTML pages and JSON snapshots rendered from the query layer into
`[paths] site_dir`, which nginx serves read-only.

Modules, each importing only those above it in this list:

- `charts`: inline SVG charts (no script, no library).
- `views`: formatting helpers for the templates (`site_templates/`) and the JSON snapshots.
- `publish`: the site directory, releases flipped into place, files that appear whole.
- `worker`: the processes renders run in (the daemon's render process, a big rebuild's helpers).
- `render`: SiteRenderer (full and incremental renders) and `ralph-monitor render`'s render_once.
- `service`: SiteService, the daemon feature that schedules renders (context.Feature).

Import the module you need (`from ralph_monitor.dashboard.render import render_once`); this
package imports nothing, so `import ralph_monitor.dashboard.views` stays cheap.
"""
