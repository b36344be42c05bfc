"""The wheel carries every module, sql/ and site_templates/ inside the package, and the console
scripts; installed (not editable), its fast entry finds the package from where it lies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    return next(out.glob("ralph_monitor-*.whl"))


def test_wheel_ships_every_module_sql_and_templates(wheel: Path) -> None:
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


def test_the_installed_fast_entry_runs_the_status_line_under_s(wheel: Path, tmp_path: Path) -> None:
    """In site-packages, as `pip install` or the .deb put it: no .pth points at a source tree, and
    under -S nothing adds site-packages, so only the entry's own path fix can find the package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    [entry] = venv.glob("lib/python3*/site-packages/ralph_monitor/agent/fast_entry.py")
    done = subprocess.run([str(venv / "bin" / "python"), "-S", str(entry), "statusline"], input=b"{not json",
                          capture_output=True, timeout=60, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"ralph-monitor: no status input\n", b"")
