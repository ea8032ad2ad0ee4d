"""The deployment files agree with the code (no Docker engine runs here, so they are read).

docker-compose.yml sets only real settings with values that parse, the Dockerfile runs a real
``pacs`` subcommand, ``.ci/run`` calls the README's test command, the README opens with the two
commands, every setting is documented, and the conformance statement's tables are current.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from pacs.cli import app
from pacs.config import Settings
from pacs.security.subject import Role

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME:+alternative}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")

REQUIRED = {
    "POSTGRES_PASSWORD": "pg-secret",
    "MINIO_ROOT_USER": "archive",
    "MINIO_ROOT_PASSWORD": "minio-secret",
    "PACS_SERVER_NAME": "pacs.region.example",
    "PACS_TLS_DIR": "/etc/pacs/tls",
    "KEYCLOAK_ADMIN_PASSWORD": "keycloak-secret",
}
"""The variables compose refuses to start without (``${NAME:?message}``): credentials have no
default. The values stand in for an operator's .env file."""
CREDENTIAL = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER")


def interpolate(value: str) -> str:
    """``value`` as ``docker compose`` resolves it with only the ``REQUIRED`` variables set."""

    def resolve(match: re.Match[str]) -> str:
        op = match.group("op") or ""
        name = match.group("name")
        if name in REQUIRED:
            return REQUIRED[name]
        if op.endswith("-"):
            return match.group("arg")
        if op.endswith("?"):
            pytest.fail(f"{match.group(0)} is required but not in REQUIRED (test_deployment.py)")
        return ""  # unset variable; ${NAME:+alt} of an unset variable is empty too

    return _VARIABLE.sub(resolve, value.replace("$$", "\0")).replace("\0", "$")


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (anchors and merge keys resolved by PyYAML)."""
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, interpolated, whether written as a mapping or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate("" if v is None else str(v)) for k, v in env.items()}


def pacs_services() -> dict[str, dict[str, str]]:
    """The PACS_* variables of every service that sets any."""
    found = {}
    for name, service in compose()["services"].items():
        env = {k: v for k, v in environment(service).items() if k.startswith("PACS_")}
        if env:
            found[name] = env
    return found


def settings_env_names() -> set[str]:
    """The environment variable of every Settings field."""
    return {f"PACS_{name.upper()}" for name in Settings.model_fields}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings built from exactly ``env``, as the container's process would build them."""
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_topology() -> None:
    services = compose()["services"]
    images = {name: str(s.get("image", "")) for name, s in services.items()}
    assert any(image.startswith("postgres:15") for image in images.values())
    assert any(image.startswith("minio/minio") for image in images.values())
    assert any(image.startswith("minio/mc") for image in images.values()), "bucket creation"
    archive = services["archive"]
    assert archive.get("build") in (".", {"context": "."})
    published = {str(p).rsplit(":", 1)[-1] for p in archive.get("ports", [])}
    assert {"11112", "2762"} <= published
    assert "8000" not in published, "the HTTP API is reached through the TLS proxy only"


def test_compose_tls_proxy_fronts_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    proxy = services["proxy"]
    image = str(proxy["image"])
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", image), f"pin the proxy image: {image}"
    assert {str(p).rsplit(":", 1)[-1] for p in proxy["ports"]} == {"443", "80"}
    mounts = {interpolate(str(v)).split(":")[1]: interpolate(str(v)) for v in proxy["volumes"]}
    config_source = mounts["/etc/nginx/conf.d/default.conf"].split(":")[0]
    config = (ROOT / config_source).read_text(encoding="utf-8")
    assert "/etc/nginx/tls" in mounts
    assert re.search(r"listen 443 ssl;", config)
    assert re.search(r"ssl_protocols TLSv1\.2 TLSv1\.3;", config)
    assert "proxy_pass http://archive:8000;" in config
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "Host"):
        assert re.search(rf"proxy_set_header {header} ", config), header
    assert re.search(r"return 30[18] https://", config), "plain HTTP only redirects"
    settings = settings_from(pacs_services()["archive"], monkeypatch)
    assert settings.public_base_url == f"https://{REQUIRED['PACS_SERVER_NAME']}"
    assert settings.forwarded_allow_ips
    assert settings.dicom_tls and settings.dicom_tls_port == 2762


def test_compose_has_no_default_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every credential comes from a required variable; the archive admits listed AEs only."""
    text = COMPOSE.read_text(encoding="utf-8")
    for match in _VARIABLE.finditer(text):
        if CREDENTIAL.search(match.group("name")):
            assert match.group("op") == ":?", f"{match.group(0)}: a credential needs :?"
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if CREDENTIAL.search(str(key)):
                assert "${" in str(value), f"{name}: {key} is written in the file, not required"
    for url in re.findall(r"://[^/\s:@]+:([^@\s]+)@", text):
        assert url.startswith("${") and ":?" in url, f"password in a URL must be required: {url}"
    settings = settings_from(pacs_services()["archive"], monkeypatch)
    assert settings.accept_any_ae is False


def test_compose_sets_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = pacs_services()
    assert "archive" in services
    known = settings_env_names()
    for name, env in services.items():
        unknown = sorted(set(env) - known)
        assert not unknown, f"service {name} sets {unknown}: not fields of pacs.config.Settings"
        settings = settings_from(env, monkeypatch)  # raises if a value does not parse
        assert settings.model_fields_set >= {k.removeprefix("PACS_").lower() for k in env}


def test_compose_archive_points_at_its_services(monkeypatch: pytest.MonkeyPatch) -> None:
    data = compose()
    services = data["services"]
    settings = settings_from(pacs_services()["archive"], monkeypatch)

    database = urlparse(settings.resolved_database_url)
    assert database.scheme == "postgresql+psycopg"
    assert database.hostname in services

    storage = urlparse(settings.resolved_storage_url)
    assert storage.scheme == "s3" and storage.netloc
    assert settings.s3_endpoint.split(":")[0] in services
    bucket_commands = [
        " ".join(map(interpolate, map(str, s.get("command") or [])))
        for s in services.values()
        if str(s.get("image", "")).startswith("minio/mc")
    ]
    assert any(storage.netloc in command for command in bucket_commands), bucket_commands

    assert settings.host == "0.0.0.0" or "0.0.0.0" in archive_argv(services["archive"])
    assert str(settings.dicom_port) == "11112" and str(settings.http_port) == "8000"


def archive_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """Instructions of the last build stage (the image that runs)."""
    instructions = dockerfile_instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def exec_form(keyword: str) -> list[str]:
    """The last ENTRYPOINT or CMD of the final stage, which must use the JSON (exec) form."""
    values = [args for kw, args in final_stage() if kw == keyword]
    if not values:
        return []
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} must use the exec form"
    return [str(part) for part in parsed]


def assert_pacs_command(argv: list[str]) -> None:
    """``argv`` runs a real ``pacs`` subcommand whose options all exist."""
    assert argv[:1] == ["pacs"], argv
    group = typer.main.get_command(app)
    assert argv[1] in group.commands, f"{argv[1]!r} is not a pacs subcommand"  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_dockerfile_runs_pacs_serve() -> None:
    entrypoint, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
    argv = entrypoint + cmd
    assert_pacs_command(argv)
    assert argv[1] == "serve" and "0.0.0.0" in argv


def test_compose_archive_command_is_a_pacs_subcommand() -> None:
    command = archive_argv(compose()["services"]["archive"])
    assert_pacs_command(exec_form("ENTRYPOINT") + command)


def test_dockerfile_base_user_and_healthcheck() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for kw, a in instructions if kw == "ARG" and "=" in a)
    bases = [a.split()[0] for kw, a in instructions if kw == "FROM"]
    resolved = [args.get(b.strip("${}"), b) if b.startswith("$") else b for b in bases]
    assert all(base.startswith("python:3.11-slim") for base in resolved), resolved

    stage = final_stage()
    users = [a for kw, a in stage if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "must not run as root"
    healthchecks = [a for kw, a in stage if kw == "HEALTHCHECK"]
    assert healthchecks, "HEALTHCHECK missing"
    _, _, probe = healthchecks[-1].partition(" CMD ")
    probe_argv = json.loads(probe)  # exec form: no shell in the probe
    assert any("/health" in part for part in probe_argv), probe_argv
    env = " ".join(a for kw, a in stage if kw == "ENV")
    for name in re.findall(r"\b(PACS_[A-Z0-9_]+)=", env):
        assert name in settings_env_names(), f"Dockerfile sets {name}: not a setting"


# ---------------------------------------------------------------- CI, README, docs


def test_ci_runs_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.split("#")[0].strip() for line in script.splitlines()]
    assert "make test" in commands


def test_ci_runs_make_lint_before_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.split("#")[0].strip() for line in script.splitlines()]
    assert "make lint" in commands
    assert commands.index("make lint") < commands.index("make test")


def test_make_lint_checks_style_format_and_strict_types() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    head, recipe = makefile.split("\nlint:", 1)[1].splitlines()[:2]
    assert ".installed-test" in head, "a fresh venv gets the test extras (ruff, mypy, stubs)"
    for tool in ("ruff check", "ruff format --check", "mypy"):
        assert tool in recipe, recipe
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert mypy["strict"] is True
    assert set(mypy["packages"]) == {"pacs", "inference", "viewer_api"}
    for override in mypy.get("overrides", []):  # only for third-party modules without types
        assert not any(module.split(".")[0] in mypy["packages"] for module in override["module"]), (
            override
        )


def test_ci_never_ends_processes_by_name() -> None:
    """CI may share the machine: .ci/run keeps the packaged Orthanc service from starting
    instead of ending every Orthanc there is."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = "\n".join(line.split("#")[0] for line in script.splitlines())
    assert not re.search(r"\b(pkill|killall|pgrep)\b", commands)
    assert "policy-rc.d" in commands


def test_make_test_runs_in_parallel_and_prints_the_slowest_tests() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ntest:", 1)[1].splitlines()[1]
    assert "pytest" in recipe and "--durations=25" in recipe, recipe
    assert "-n $(TEST_WORKERS) --dist loadgroup" in recipe, recipe


def test_readme_opens_with_make_run_and_make_test() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if line.strip()]
    assert body[0].startswith("# "), "README starts with its title"
    assert body[1].startswith("```"), "then a code block with the two commands"
    commands = [line.split("#")[0].strip() for line in body[2:4]]
    assert commands == ["make run", "make test"]


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(name for name in settings_env_names() if f"`{name}`" not in text)
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_conformance_statement_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_conformance.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + "\nrun: python docs/gen_conformance.py"


# ---------------------------------------------------------------- identity (Keycloak)

REALM = ROOT / "docker" / "keycloak" / "realm-pacs.json"


def realm() -> dict[str, Any]:
    data = json.loads(REALM.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_runs_keycloak_with_the_realm(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    keycloak = services["keycloak"]
    image = str(keycloak["image"])
    assert image.startswith("quay.io/keycloak/keycloak:") and image.split(":")[1][0].isdigit()
    assert "--import-realm" in archive_argv(keycloak)
    mounts = [str(volume).split(":") for volume in keycloak.get("volumes", [])]
    assert any(
        (ROOT / source).resolve() == REALM and target.startswith("/opt/keycloak/data/import/")
        for source, target, *_ in mounts
    ), mounts
    settings = settings_from(pacs_services()["archive"], monkeypatch)
    assert settings.auth == "oidc"
    issuer = urlparse(settings.oidc_issuer)
    assert issuer.hostname in services and issuer.path == f"/realms/{realm()['realm']}"
    kc_env = environment(keycloak)
    assert settings.oidc_issuer.startswith(kc_env["KC_HOSTNAME"]), "tokens' iss is the issuer"
    assert "keycloak" in services["archive"].get("depends_on", {})


def test_realm_has_the_roles_clients_and_mappers(monkeypatch: pytest.MonkeyPatch) -> None:
    data = realm()
    settings = settings_from(pacs_services()["archive"], monkeypatch)
    roles = {role["name"] for role in data["roles"]["realm"]}
    assert roles == {role.value for role in Role}
    clients = {client["clientId"]: client for client in data["clients"]}
    api, web = clients[settings.oidc_audience], clients[settings.oidc_web_client_id]
    assert api["publicClient"] is False and api["clientAuthenticatorType"] == "client-secret"
    assert "secret" not in api, "no client secret in the repository: Keycloak generates it"
    assert api["serviceAccountsEnabled"] is True
    assert web["publicClient"] is True and web["standardFlowEnabled"] is True
    assert web["implicitFlowEnabled"] is False and web["directAccessGrantsEnabled"] is False
    assert web["attributes"]["pkce.code.challenge.method"] == "S256"
    assert any(uri.endswith("/login/callback") for uri in web["redirectUris"])
    for client in (api, web):
        mappers = {m["protocolMapper"]: m for m in client["protocolMappers"]}
        audience = mappers["oidc-audience-mapper"]["config"]
        assert audience["included.client.audience"] == settings.oidc_audience
        assert audience["access.token.claim"] == "true"
        assert mappers["oidc-usermodel-realm-role-mapper"]["config"]["claim.name"] == (
            settings.oidc_roles_claim
        )
        claims = {
            m["config"]["claim.name"]: m["config"]
            for m in client["protocolMappers"]
            if m["protocolMapper"] == "oidc-usermodel-attribute-mapper"
        }
        for name in (
            settings.oidc_organisation_claim,
            settings.oidc_practitioner_claim,
            settings.oidc_patient_claim,
        ):
            assert claims[name]["id.token.claim"] == claims[name]["access.token.claim"] == "true"
    service_accounts = [u for u in data.get("users", []) if "serviceAccountClientId" in u]
    assert [u["realmRoles"] for u in service_accounts] == [["system"]]
    assert all("credentials" not in user for user in data.get("users", [])), "no passwords"
