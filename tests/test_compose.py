"""compose.yaml and the Dockerfile match the application's entry points."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

BASE_DIR = Path(__file__).resolve().parent.parent


def load() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((BASE_DIR / "compose.yaml").read_text())


def command(service: dict) -> str:  # type: ignore[type-arg]
    value = service.get("command", "")
    return " ".join(value) if isinstance(value, list) else value


STACK = ("postgres", "redis", "gateway", "worker", "beat", "prometheus", "grafana", "mailpit")


def test_it_runs_every_part_of_the_stack_with_health_checks() -> None:
    services = load()["services"]
    assert set(STACK) <= set(services)
    for name in STACK:
        assert "healthcheck" in services[name], name


def test_the_commands_use_the_documented_entry_points() -> None:
    services = load()["services"]
    assert "gateway.asgi:application" in command(services["gateway"])
    assert re.search(r"celery -A gateway worker", command(services["worker"]))
    assert re.search(r"celery -A gateway beat", command(services["beat"]))
    assert "migrate" in command(services["migrate"])


def test_app_services_get_the_required_environment() -> None:
    compose = load()
    required = {"DATABASE_URL", "REDIS_URL"}
    example = (BASE_DIR / ".env.example").read_text()
    for name in ("gateway", "worker", "beat", "migrate"):
        service = compose["services"][name]
        assert required <= set(service["environment"]), name
        assert service["env_file"] == ".env"
    for variable in (
        "SECRET_KEY",
        "TOLLGATE_ENCRYPTION_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "SENTRY_DSN",
    ):
        assert re.search(rf"^{variable}=", example, re.MULTILINE), variable


def test_data_lives_in_volumes() -> None:
    services = load()["services"]
    assert any("/var/lib/postgresql/data" in v for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert "prometheus-data:/prometheus" in services["prometheus"]["volumes"]
    assert "grafana-data:/var/lib/grafana" in services["grafana"]["volumes"]
    assert "mailpit-data:/data" in services["mailpit"]["volumes"]
    assert services["mailpit"]["environment"]["MP_DATABASE"].startswith("/data/")


def mounts(service: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """Bind mounts of the repository's files: container path -> repository path."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (BASE_DIR / source).exists(), source
            found[target] = source
    return found


def test_prometheus_scrapes_the_gateway_and_every_worker_on_their_ports() -> None:
    services = load()["services"]
    config_path = mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((BASE_DIR / config_path).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway = jobs["tollgate-gateway"]
    assert gateway["metrics_path"] == "/metrics"
    assert gateway["static_configs"][0]["targets"] == ["gateway:8000"]
    assert "--port 8000" in command(services["gateway"])
    assert "gateway" in services["gateway"]["environment"]["ALLOWED_HOSTS"].split(",")
    worker = jobs["tollgate-worker"]["dns_sd_configs"][0]
    assert worker["names"] == ["worker"]
    assert str(worker["port"]) == services["worker"]["environment"]["TOLLGATE_WORKER_METRICS_PORT"]
    for name in ("gateway", "worker"):
        env = services[name]["environment"]
        assert env["PROMETHEUS_MULTIPROC_DIR"] in command(services[name])  # emptied at start


def test_grafana_gets_the_datasource_and_the_dashboard_provisioned() -> None:
    services = load()["services"]
    grafana = mounts(services["grafana"])
    provisioning = BASE_DIR / grafana["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    source = datasource["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "tollgate.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert grafana[dashboards_dir] == "./deploy/grafana/dashboards"
    dashboard = json.loads((BASE_DIR / "deploy/grafana/dashboards/tollgate.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if panel["type"] != "row"}
    assert uids == {source["uid"]}
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/tollgate.json"


def test_every_compose_variable_is_documented() -> None:
    text = (BASE_DIR / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (BASE_DIR / ".env.example").read_text()
    assert used
    assert not {name for name in used if not re.search(rf"^{name}=", example, re.MULTILINE)}


def test_every_setting_read_from_the_environment_is_documented() -> None:
    read = set()
    for path in (BASE_DIR / "gateway").glob("settings.py"):
        read |= set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', path.read_text()))
    example = (BASE_DIR / ".env.example").read_text()
    missing = {name for name in read if not re.search(rf"^{name}=", example, re.MULTILINE)}
    assert not missing
