"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the structure, and every
command a container runs parsed by the real ``stocksync`` and ``dramatiq`` command lines."""
from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from runtime.settings import Settings
from tests.deploy_commands import Pending, check_command
from tests.fleet import ROOT

COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
#: The secrets compose must be given: no default, no start without them.
PASSWORDS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
#: The services that run the stocksync image.
APP = ("migrate", "workers", "scheduler", "intake", "console", "sandbox", "refurbed-sandbox", "shopify-sandbox")


def test_it_has_every_service_of_the_fleet():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "workers", "scheduler", "intake", "console", "sandbox",
                             "refurbed-sandbox", "shopify-sandbox", "prometheus", "grafana"}
    for name in APP:
        assert SERVICES[name]["build"] == "." and SERVICES[name]["image"] == "stocksync:latest", name
        assert isinstance(SERVICES[name]["command"], list), f"{name}: exec form, so SIGTERM reaches the process"
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on") or []:
            assert dependency in SERVICES, (name, dependency)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_fleet_waits_for_its_database_redis_and_schema():
    assert "healthcheck" in SERVICES["postgres"] and "healthcheck" in SERVICES["redis"]
    assert SERVICES["migrate"]["command"] == ["stocksync", "db", "upgrade"]
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("workers", "scheduler", "intake", "console"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == depends["postgres"]["condition"] == "service_healthy", name
        environment = SERVICES[name]["environment"]
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"].startswith("redis://:") and "@redis:6379/" in environment["REDIS_URL"]


@pytest.mark.parametrize("name", APP)
def test_every_command_a_container_runs_exists_in_the_cli(name):
    try:
        check_command(SERVICES[name]["command"])
    except Pending as pending:
        pytest.skip(str(pending))


def test_workers_get_the_time_to_finish_their_messages():
    command = SERVICES["workers"]["command"]
    shutdown_s = int(command[command.index("--worker-shutdown-timeout") + 1]) / 1000
    grace = SERVICES["workers"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) > shutdown_s
    assert SERVICES["workers"]["stop_signal"] == "SIGTERM"


def test_prometheus_scrapes_every_process_on_its_metrics_port():
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus-compose.yml").read_text())
    found = {(name, sd["port"]) for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", [])
             for name in sd["names"]}
    exposed = {(name, int(SERVICES[name]["environment"]["METRICS_PORT"])) for name in APP
               if "METRICS_PORT" in SERVICES[name].get("environment", {})}
    assert exposed == found == {("workers", 9191), ("scheduler", 9194), ("intake", 9195), ("console", 9196)}
    for name, _ in exposed:
        assert SERVICES[name]["environment"]["METRICS_HOST"] == "0.0.0.0", name
    for name in set(APP) - {name for name, _ in exposed}:
        assert "METRICS_HOST" not in SERVICES[name].get("environment", {}), f"{name} serves no metrics"


def test_prometheus_gets_the_alert_rules_its_config_loads():
    # A rule_files entry is read relative to the config's folder: the container must have it there.
    volumes = [volume.split(":") for volume in SERVICES["prometheus"]["volumes"] if volume.startswith("./")]
    mounts = {target: source for source, target, *_ in volumes}
    config = mounts["/etc/prometheus/prometheus.yml"]
    assert config == "./deploy/prometheus/prometheus-compose.yml"
    rule_files = yaml.safe_load((ROOT / config).read_text())["rule_files"]
    assert rule_files == ["alerts.yml"]
    for rule_file in rule_files:
        assert mounts[f"/etc/prometheus/{rule_file}"] == f"./deploy/prometheus/{rule_file}"
    assert all(options == ["ro"] for _, _, *options in volumes)


def test_every_file_a_container_mounts_is_in_the_repository():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
    mounts = {volume.split(":")[1] for volume in SERVICES["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= mounts
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/stocksync.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_image_holds_every_package_of_the_project():
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE))
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
    assert re.search(r"^COPY pyproject\.toml README\.md ", dockerfile, re.MULTILINE)  # the build reads both
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)", dockerfile, re.MULTILINE)
    # Loopback unless compose (or an operator) says otherwise for a service Prometheus scrapes.
    assert not re.search(r"METRICS_HOST\s*=", dockerfile)


def test_the_fleet_containers_are_healthy_only_when_ready():
    # Each probe asks the process's own /readyz (Redis, PostgreSQL, migrations at head) on its port.
    for name, port in (("workers", 9191), ("scheduler", 9194), ("intake", 8790)):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"http://127.0.0.1:{port}/readyz" in test[3], name
        compile(test[3], name, "exec")
    assert SERVICES["workers"]["environment"]["METRICS_PORT"] == "9191"
    assert SERVICES["intake"]["environment"]["INTAKE_PORT"] == "8790"


def test_every_main_accounts_settings_reach_the_fleet_containers():
    # Compose passes a container only the variables its environment names (an .env file only fills them in).
    from core.platforms import PLATFORMS

    given = {name: f"value-of-{name.lower()}" for name in
             [platform.default_credential for platform in PLATFORMS.values() if platform.default_credential]
             + ["BACKMARKET_BASE_URL", "REFURBED_BASE_URL", "SHOPIFY_SHOP_DOMAIN", "SHOPIFY_BASE_URL"]}
    assert {"BACKMARKET_TOKEN", "REFURBED_TOKEN", "SHOPIFY_TOKEN"} <= set(given)
    services = yaml.safe_load(interpolate(COMPOSE_TEXT, {**GOOD, **given}))["services"]
    unset = yaml.safe_load(interpolate(COMPOSE_TEXT, GOOD))["services"]
    for name in ("migrate", "workers", "scheduler", "intake", "console"):
        environment = services[name]["environment"]
        assert {key: environment.get(key) for key in given} == given, name
        # Unset: the main Shopify shop is not used (no host to send a token to), Refurbed keeps its API's host.
        # (``KEY: ${KEY:-}`` is an empty string to compose, None to this text-first interpolation.)
        assert not unset[name]["environment"]["SHOPIFY_TOKEN"] and not unset[name]["environment"]["SHOPIFY_SHOP_DOMAIN"]
        assert unset[name]["environment"]["REFURBED_BASE_URL"] == Settings.model_fields["refurbed_base_url"].default


# -- passwords -------------------------------------------------------------------------------------


class Refused(Exception):
    """What ``docker compose`` does on a ``${VAR:?message}`` whose variable is unset or empty."""


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, environment: dict[str, str]) -> str:
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}`` and ``$$``, as its documentation describes it."""
    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        given = environment.get(name)
        missing = given is None or (given == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and missing:
            raise Refused(f"required variable {name} is missing a value: {arg}")
        if op in (":-", "-") and missing:
            return arg
        return given or ""
    return _VARIABLE.sub(value, text)


GOOD = {"POSTGRES_PASSWORD": "pg-9f1c2b", "REDIS_PASSWORD": "redis-4e7a0d", "GRAFANA_ADMIN_PASSWORD": "gf-1b2c3d"}


@pytest.mark.parametrize("missing", PASSWORDS)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_start_without_each_password(missing, how):
    environment = {name: value for name, value in GOOD.items() if name != missing or how == "empty"}
    if how == "empty":
        environment[missing] = ""
    with pytest.raises(Refused, match=missing):
        interpolate(COMPOSE_TEXT, environment)


def test_every_use_of_a_password_is_required_and_none_has_a_default():
    uses = re.findall(r"\$\{(" + "|".join(PASSWORDS) + r")([^}]*)\}", COMPOSE_TEXT)
    assert {name for name, _ in uses} == set(PASSWORDS)
    for name, rest in uses:
        assert rest.startswith(":?"), f"${{{name}{rest}}}: a password must be ${{{name}:?...}}"
    # The old baked-in ones: PostgreSQL's stocksync, Grafana's admin, Redis without a password.
    assert "stocksync:stocksync@" not in COMPOSE_TEXT and ":-admin}" not in COMPOSE_TEXT
    assert "redis://redis:" not in COMPOSE_TEXT


def test_with_the_passwords_every_service_uses_them():
    services = yaml.safe_load(interpolate(COMPOSE_TEXT, GOOD))["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == GOOD["POSTGRES_PASSWORD"]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--requirepass") + 1] == GOOD["REDIS_PASSWORD"]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == GOOD["REDIS_PASSWORD"]
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == GOOD["GRAFANA_ADMIN_PASSWORD"]
    for name in APP:
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"] == (f"postgresql+psycopg://stocksync:{GOOD['POSTGRES_PASSWORD']}"
                                               "@postgres:5432/stocksync"), name
        assert environment["REDIS_URL"] == f"redis://:{GOOD['REDIS_PASSWORD']}@redis:6379/0", name
    # The healthcheck passes the password through the environment, never on its command line.
    assert services["redis"]["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    assert (ROOT / "deploy/compose.env.example").read_text().count("_PASSWORD=\n") == len(PASSWORDS)
