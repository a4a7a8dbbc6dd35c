"""Configuration: defaults from the contract; a bad value fails at start naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings


def test_defaults_are_the_contracts(settings_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.database_url == "sqlite+aiosqlite:///gateway.db"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.public_url == "http://127.0.0.1:8080"
    assert (s.sip_host, s.sip_port) == ("127.0.0.1", 5060)
    assert s.twilio_api_url == "https://api.twilio.com"
    assert not s.twilio_enabled and not s.whatsapp_enabled


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("GATEWAY_HTTP_PORT", "eighty", "GATEWAY_HTTP_PORT"),
        ("GATEWAY_SIP_PORT", "70000", "GATEWAY_SIP_PORT"),
        ("GATEWAY_PUBLIC_URL", "gw.example.com", "GATEWAY_PUBLIC_URL"),
        ("GATEWAY_DATABASE_URL", "mysql://x", "GATEWAY_DATABASE_URL"),
        ("GATEWAY_TWILIO_ACCOUNT_SID", "AC123", "GATEWAY_TWILIO_AUTH_TOKEN"),
        ("GATEWAY_WHATSAPP_VERIFY_TOKEN", "v", "GATEWAY_WHATSAPP_APP_SECRET"),
        ("GATEWAY_AGENTS", '[{"id": "12", "sip_user": "alice"}]', "GATEWAY_AGENTS[0]"),
        ("GATEWAY_AGENTS", "not json", "GATEWAY_AGENTS"),
    ],
)
def test_bad_value_names_the_key(settings_env: pytest.MonkeyPatch, key: str, value: str,
                                 named: str) -> None:
    settings_env.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert named in message and "\n" not in message


def test_toml_file_is_read_and_environment_wins(settings_env: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('http_port = 9090\npublic_url = "https://gw.example.com"\n'
                    '[[agents]]\nid = "12"\nsip_user = "alice"\nsip_password = "pw"\n')
    s = load_settings(path)
    assert s.http_port == 9090 and s.agents[0].sip_user == "alice"
    settings_env.setenv("GATEWAY_HTTP_PORT", "9191")
    assert load_settings(path).http_port == 9191


def test_missing_or_broken_config_file_is_one_clear_line(settings_env: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("http_port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_serve_refuses_to_start_on_a_bad_value_with_one_line(tmp_path: Path) -> None:
    env = {"GATEWAY_HTTP_PORT": "eighty", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "GATEWAY_HTTP_PORT" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_the_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("serve", "demo", "db"):
        assert command in proc.stdout
