"""docker-compose.yml and the images it builds, checked without a Docker engine.

This machine (and CI) has the docker client but no daemon, so the compose file is never run
here. What can be checked is: that it is a valid Compose file (the official compose-spec
JSON schema, vendored in tests/data from github.com/compose-spec/compose-spec, Apache-2.0);
that it has no default secrets (each is `${VAR:?…}`, so compose stops and names it); that
the environment it gives each gateway is one `gateway serve` accepts; that Kamailio's
dispatcher list names the gateways as compose does; and that the package the gateway image
installs (the Dockerfile's COPY lines, `pip install .`) serves: migrations, console and all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

from config.settings import load_settings
from tests.helpers import wait_until
from tests.peers import _Child

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SECRETS = ("POSTGRES_PASSWORD", "GATEWAY_AGENT_TOKEN", "GATEWAY_SIP_NONCE_SECRET")
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class Missing(Exception):
    """A required variable (`${VAR:?message}`) is not set: compose stops with the message."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (the subset the file uses: ${V}, ${V:-d}, ${V:?m})."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        got = env.get(name)
        if op in (":?", "?") and not got:
            raise Missing(f"{name}: {arg}")
        if op in (":-", "-") and not got:
            return arg
        return got or ""

    return _VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # merge keys (<<) resolved


def gateways(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in spec["services"].items()
            if s.get("build") == "." or name.startswith("gateway")}


def test_the_compose_file_is_valid_by_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()),
                    key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_has_no_default_secrets_and_names_each_missing_one() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for line in text.splitlines():
        for match in _VARIABLE.finditer(line.split("#", 1)[0]):
            if re.search(r"SECRET|TOKEN|PASSWORD", match["name"]) and match["op"] in (":-", "-"):
                assert not match["arg"], f"a default secret in docker-compose.yml: {line.strip()}"
    spec = compose()
    for secret in SECRETS:
        env = {s: "x" * 24 for s in SECRETS if s != secret}
        with pytest.raises(Missing, match=secret):
            interpolate(spec, env)
    interpolate(spec, {s: "x" * 24 for s in SECRETS})  # all set: nothing else is required


def test_every_service_has_a_health_check_and_what_it_builds_exists() -> None:
    spec = compose()
    for name, service in spec["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        if "build" in service:
            context = ROOT / service["build"]
            assert (context / "Dockerfile").is_file(), f"{name}: no {context}/Dockerfile"
            for source in re.findall(r"^COPY\s+(.+)\s+\S+$", (context / "Dockerfile").read_text(),
                                     re.M):
                for path in source.split():
                    assert (context / path).exists(), f"{name}'s Dockerfile copies {path}: missing"


def test_each_gateway_gets_an_environment_gateway_serve_accepts_and_kamailio_knows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = interpolate(compose(), {s: "s3cret-" + "x" * 20 for s in SECRETS})
    found = gateways(spec)
    assert len(found) >= 2, "compose runs at least two gateways"
    dispatcher = (ROOT / "config" / "kamailio" / "dispatcher.list").read_text()
    listed = set(re.findall(r"^\s*1\s+sip:([^\s;]+)", dispatcher, re.M))
    for name, service in found.items():
        for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
            monkeypatch.delenv(key)
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, str(value))
        settings = load_settings()  # a ConfigError here names the key compose gets wrong
        assert settings.database_url.startswith("postgresql+asyncpg://")
        assert "@postgres/" in settings.database_url  # the compose service, by name
        assert settings.sip_shared_registrations, f"{name}: registrations not shared"
        assert settings.sip_domain == name, f"{name}: Kamailio reaches it as {name}"
        assert f"{name}:{settings.sip_port}" in listed, f"{name} is not in dispatcher.list"


def _install_like_the_image(directory: Path) -> Path:
    """The gateway image's install: the Dockerfile's COPY sources, `pip install .`."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    source = directory / "src"
    source.mkdir()
    for line in re.findall(r"^COPY\s+(.+)\s+\S+$", dockerfile, re.M):
        for path in line.split():
            if (ROOT / path).is_dir():
                shutil.copytree(ROOT / path, source / path,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / path, source / path)
    target = directory / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    return target


async def test_the_package_the_gateway_image_installs_migrates_and_serves(
    tmp_path: Path,
) -> None:
    site = _install_like_the_image(tmp_path)
    assert not (site / "tests").exists()
    run = tmp_path / "run"  # not the repository: only the installed package is importable
    run.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site),
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{run / 'gateway.db'}",
           "GATEWAY_HTTP_PORT": "0", "GATEWAY_SIP_PORT": "0", "GATEWAY_LOG_LEVEL": "INFO",
           "GATEWAY_AGENT_TOKEN": "image-test-token-0123456789",
           "GATEWAY_PUBLIC_URL": "http://127.0.0.1:8080"}
    child = _Child("image-gateway", [sys.executable, "-I", "-c",
                                      "import sys; sys.path.insert(0, sys.argv[1]); "
                                      "from gateway.cli import main; sys.exit(main(['serve']))",
                                      str(site)], run, cwd=run, env=env)
    try:
        def listening() -> bool:
            return bool(re.search(r"listening on http://127\.0\.0\.1:\d+", child.output())) \
                or not child.alive()
        await wait_until(listening, timeout=60, what="the installed gateway to listen")
        output = child.output()
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", output)
        assert url, f"the installed package did not serve:\n{output[-3000:]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url[1]}/healthz") as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["status"] == "ok"
            async with http.get(f"{url[1]}/console") as response:
                assert response.status == 200
                assert "<html" in (await response.text()).lower()
        assert str(ROOT) not in output  # nothing came from the checkout
    finally:
        child.stop()
