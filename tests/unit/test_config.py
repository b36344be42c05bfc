"""Config: defaults, the messages a bad file gets, secrets kept out of world-readable files,
and `ralph-monitor init-config`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ralph_monitor import config
from ralph_monitor.config import (
    CONFIG_ENV_VAR,
    Settings,
    load_settings,
    read_password,
    render_default_config,
    settings_from_mapping,
)
from ralph_monitor.errors import ConfigError


@pytest.fixture(autouse=True)
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)


def write(path: Path, text: str, mode: int = 0o640) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def load_text(tmp_path: Path, text: str, mode: int = 0o640) -> Settings:
    return load_settings(write(tmp_path / "config.toml", text, mode))


def config_error(tmp_path: Path, text: str, mode: int = 0o640) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, mode)
    return str(info.value)


# Where the settings come from


def test_defaults_when_the_default_file_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_settings() == Settings()


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "config.toml", '[limits]\nmax_connections = 7\n')
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    assert load_settings().limits_max_connections == 7


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    path = write(tmp_path / "env.toml", '[monitor]\nhost = "box-1"\n')
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert load_settings().host == "box-1"
    # An explicit path wins over the environment.
    other = write(tmp_path / "other.toml", '[monitor]\nhost = "box-2"\n')
    assert load_settings(other).host == "box-2"


def test_env_var_naming_a_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv(CONFIG_ENV_VAR, str(missing))
    with pytest.raises(ConfigError, match="init-config") as info:
        load_settings()
    assert str(missing) in str(info.value)


def test_explicit_missing_file_names_the_file_and_init_config(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    message = str(info.value)
    assert str(missing) in message
    assert f"ralph-monitor init-config {missing}" in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[socket\npath = '/x'\n")
    assert str(tmp_path / "config.toml") in message
    assert "invalid TOML" in message


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[monitor]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_values_are_read(tmp_path: Path) -> None:
    settings = load_text(tmp_path, """
[socket]
path = "/run/x/events.sock"
mode = "0620"
group = "agents"
[database]
dsn = "host=/run/postgresql dbname=ralph"
connect_timeout_s = 5
[paths]
state_dir = "/srv/ralph"
[limits]
max_line_bytes = 2048
idle_timeout_s = 1.5
""")
    assert settings.socket_path == "/run/x/events.sock"
    assert settings.socket_mode_bits == 0o620
    assert settings.socket_group == "agents"
    assert settings.database_dsn == "host=/run/postgresql dbname=ralph"
    assert settings.database_connect_timeout_s == 5.0
    assert isinstance(settings.database_connect_timeout_s, float)
    assert settings.state_dir == Path("/srv/ralph")
    assert settings.site_dir == Path("/srv/ralph/site")
    assert settings.spool_dir == Path("/srv/ralph/spool")
    assert settings.limits_max_line_bytes == 2048
    assert settings.limits_idle_timeout_s == 1.5
    assert not settings.embedded_database


# Mistakes get a message naming the key and the fix


def test_unknown_section_suggests_the_close_match(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[databse]\ndsn = "x"\n')
    assert "unknown section [databse]" in message
    assert "did you mean [database]?" in message


def test_unknown_key_suggests_the_close_match(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[database]\ndns = "host=/tmp"\n')
    assert "[database] dns" in message
    assert "did you mean 'dsn'?" in message


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[limits]\nzzz = 1\n')
    assert "[limits] zzz" in message
    assert "max_line_bytes" in message


def test_top_level_key_outside_any_section_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'dsn = "host=/tmp"\n')
    assert "dsn" in message
    assert "database" in message


def test_section_written_as_a_plain_value_is_an_error_not_a_crash(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'database = "postgresql://u@h/db"\n')
    assert "[database]" in message


@pytest.mark.parametrize("text, where, expected", [
    ('[limits]\nmax_connections = "10"\n', "[limits] max_connections", "an integer"),
    ('[limits]\nmax_connections = true\n', "[limits] max_connections", "an integer"),
    ('[limits]\nmax_connections = 1.5\n', "[limits] max_connections", "an integer"),
    ('[database]\nconnect_timeout_s = "3"\n', "[database] connect_timeout_s", "a number"),
    ('[database]\nconnect_timeout_s = false\n', "[database] connect_timeout_s", "a number"),
    ('[socket]\nmode = 432\n', "[socket] mode", "a string"),
    ('[monitor]\nhost = ["a"]\n', "[monitor] host", "a string"),
])
def test_wrong_type_names_the_key_and_expected_type(tmp_path: Path, text: str, where: str, expected: str) -> None:
    message = config_error(tmp_path, text)
    assert where in message
    assert f"must be {expected}" in message


@pytest.mark.parametrize("text, where", [
    ("[limits]\nmax_line_bytes = 100\n", "[limits] max_line_bytes"),
    ("[limits]\nmax_connections = 0\n", "[limits] max_connections"),
    ("[database]\nconnect_timeout_s = 0.0\n", "[database] connect_timeout_s"),
    ("[limits]\nidle_timeout_s = -1\n", "[limits] idle_timeout_s"),
])
def test_minimum_violated(tmp_path: Path, text: str, where: str) -> None:
    message = config_error(tmp_path, text)
    assert where in message
    assert "minimum" in message


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: str) -> None:
    message = config_error(tmp_path, f"[database]\nconnect_timeout_s = {value}\n")
    assert "[database] connect_timeout_s" in message


def test_minimum_itself_is_accepted(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[limits]\nmax_line_bytes = 1024\n")
    assert settings.limits_max_line_bytes == 1024


@pytest.mark.parametrize("mode", ["0666", "0662", "0777"])
def test_world_writable_socket_mode_is_refused(tmp_path: Path, mode: str) -> None:
    message = config_error(tmp_path, f'[socket]\nmode = "{mode}"\n')
    assert "[socket] mode" in message
    assert "0660" in message


@pytest.mark.parametrize("mode", ["abc", "0980", "", "-0660", "04770"])
def test_non_octal_socket_mode_is_refused(tmp_path: Path, mode: str) -> None:
    message = config_error(tmp_path, f'[socket]\nmode = "{mode}"\n')
    assert "[socket] mode" in message
    assert "octal" in message


@pytest.mark.parametrize("section, key", [
    ("paths", "state_dir"), ("paths", "site_dir"), ("paths", "backup_dir"), ("socket", "path"),
])
def test_relative_path_is_refused(tmp_path: Path, section: str, key: str) -> None:
    message = config_error(tmp_path, f'[{section}]\n{key} = "relative/dir"\n')
    assert f"[{section}] {key}" in message
    assert "absolute" in message


def test_unknown_log_level_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[monitor]\nlog_level = "verbose"\n')
    assert "[monitor] log_level" in message
    assert "debug" in message


# No password in a world-readable file (guarantee 7)


@pytest.mark.parametrize("dsn", [
    "host=/run/postgresql dbname=ralph user=writer password=s3cret",
    "postgresql://writer:s3cret@db.example/ralph",
    "postgres://writer:s3cret@db.example:5432/ralph?sslmode=require",
])
def test_world_readable_file_with_a_password_is_refused(tmp_path: Path, dsn: str) -> None:
    path = tmp_path / "config.toml"
    message = config_error(tmp_path, f'[database]\ndsn = "{dsn}"\n', mode=0o644)
    assert "chmod" in message
    assert str(path) in message
    assert "password_file" in message


@pytest.mark.parametrize("dsn", [
    "host=/run/postgresql dbname=ralph user=writer password=s3cret",
    "postgresql://writer:s3cret@db.example/ralph",
])
def test_password_in_a_file_others_cannot_read_is_accepted(tmp_path: Path, dsn: str) -> None:
    assert load_text(tmp_path, f'[database]\ndsn = "{dsn}"\n', mode=0o640).database_dsn == dsn
    assert load_text(tmp_path, f'[database]\ndsn = "{dsn}"\n', mode=0o600).database_dsn == dsn


@pytest.mark.parametrize("dsn", [
    "host=/run/postgresql dbname=ralph user=writer",
    "postgresql://writer@db.example/ralph",
    "postgresql://db.example:5432/ralph",
])
def test_world_readable_file_without_a_password_is_accepted(tmp_path: Path, dsn: str) -> None:
    assert load_text(tmp_path, f'[database]\ndsn = "{dsn}"\n', mode=0o644).database_dsn == dsn


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = write(tmp_path / "pw", "s3cret\n", mode=0o644)
    settings = Settings(database_password_file=str(secret))
    with pytest.raises(ConfigError) as info:
        read_password(settings)
    message = str(info.value)
    assert str(secret) in message
    assert f"chmod 600 {secret}" in message


def test_password_file_0600_is_read_and_stripped(tmp_path: Path) -> None:
    secret = write(tmp_path / "pw", "  s3cret\n", mode=0o600)
    assert read_password(Settings(database_password_file=str(secret))) == "s3cret"


def test_no_password_file_means_no_password() -> None:
    assert read_password(Settings()) is None


def test_missing_password_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        read_password(Settings(database_password_file=str(missing)))
    assert str(missing) in str(info.value)


# The default file


def test_rendered_default_parses_back_to_the_defaults() -> None:
    text = render_default_config()
    data = tomllib.loads(text)
    assert settings_from_mapping(data, "<default>") == Settings()
    # Every setting appears, each with its help comment just above it.
    lines = text.splitlines()
    for f in dataclasses.fields(Settings):
        section = f.metadata["section"]
        key = f.name.removeprefix(section + "_")
        assert key in data[section], f.name
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
        assert lines[index - 1] == f"# {f.metadata['help']}"


def test_defaults_are_safe() -> None:
    settings = Settings()
    assert settings.socket_mode_bits & 0o007 == 0
    assert settings.embedded_database
    assert os.path.isabs(settings.socket_path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ralph_monitor", *args],
                          capture_output=True, text=True, timeout=60)


def test_init_config_writes_0640_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "config.toml"
    result = run_cli("init-config", str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_text() == render_default_config()
    assert path.stat().st_mode & 0o777 == 0o640
    assert load_settings(path) == Settings()

    path.write_text("# edited by the admin\n")
    result = run_cli("init-config", str(path))
    assert result.returncode == 1
    assert "--force" in result.stderr
    assert str(path) in result.stderr
    assert path.read_text() == "# edited by the admin\n"

    path.chmod(0o644)
    result = run_cli("init-config", "--force", str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_text() == render_default_config()
    assert path.stat().st_mode & 0o777 == 0o640


def test_init_config_to_stdout() -> None:
    result = run_cli("init-config", "-")
    assert result.returncode == 0, result.stderr
    assert settings_from_mapping(tomllib.loads(result.stdout), "<stdout>") == Settings()


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", '[limits]\nmax_conections = 10\n')
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "[limits] max_conections" in result.stderr
    assert "max_connections" in result.stderr


def test_reports_settings_are_validated() -> None:
    import pytest

    from ralph_monitor.config import settings_from_mapping
    from ralph_monitor.errors import ConfigError

    ok = settings_from_mapping({"reports": {"timezone": "Europe/Berlin", "night_start": "20:30"}}, "f.toml")
    assert ok.reports_timezone == "Europe/Berlin"
    with pytest.raises(ConfigError, match=r"\[reports\] timezone = 'Mars/Olympus' is not a known time zone"):
        settings_from_mapping({"reports": {"timezone": "Mars/Olympus"}}, "f.toml")
    with pytest.raises(ConfigError, match=r"\[reports\] night_end = '25:99' is not a time of day"):
        settings_from_mapping({"reports": {"night_end": "25:99"}}, "f.toml")
