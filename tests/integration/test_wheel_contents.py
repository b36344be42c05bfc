"""The wheel carries every module, sql/ and site_templates/ inside the package, and the console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_every_module_sql_and_templates(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("ralph_monitor-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (ROOT / "src").rglob("*.py"):  # subpackages (store/, agent/, ...) included
        assert module.relative_to(ROOT / "src").as_posix() in names
    for migration in (ROOT / "sql" / "migrations").glob("*.sql"):
        assert f"ralph_monitor/sql/migrations/{migration.name}" in names
    assert "ralph_monitor/sql/queries.sql" in names
    for template in (ROOT / "site_templates").iterdir():
        assert f"ralph_monitor/site_templates/{template.name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "ralph-monitor = ralph_monitor.launcher:main" in text
    assert "ralph-query = ralph_monitor.query_cli:query_main" in text
