"""deploy/prometheus and deploy/grafana watch metrics the platform really exports.

The embedded platform (every service in this process, auth and users on PostgreSQL) answers a few
requests; every metric name it exports then, or declares in the registry without a sample yet,
is the vocabulary an alert rule or a dashboard target may use. promtool checks the rules and runs
their unit tests (alerts.test.yml): it is installed by `make check-monitoring`, and its absence is
a failure, never a skip."""

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from embedded.app import create_app
from gateway.config import GatewaySettings
from tests.auth_service.conftest import FAST_ARGON2, JWT_SECRET, PASSWORD
from tests.conftest import DatabaseFactory, app_client, migrated_embedded_environ

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
# The series Prometheus makes itself for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "count_values", "group",
    "inf", "nan",
}  # fmt: skip
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers,
    ranges and grouping clauses are removed, other than functions (followed by `(`) and keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?=\s*([\s{\[)]|$))", text):
        if match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{x="y)"}[5m]))) > 2.5'
        " and on (job) max by (job) (b_gauge) / ignoring(x) c_total unless up == 0"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_gauge", "c_total", "up"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def dashboard_targets() -> Iterator[tuple[str, str, str]]:
    for name, dashboard in dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                yield name, panel["title"], target["expr"]


def registered_names() -> set[str]:
    """Every sample name the registry's families can expose, with or without samples yet."""
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture
def environ(databases: DatabaseFactory, tmp_path: Path) -> dict[str, str]:
    """Auth and users on PostgreSQL (their pools are watched), migrated; the others on SQLite."""
    return {
        **migrated_embedded_environ(databases, tmp_path),
        "JWT_SECRET": JWT_SECRET,
        **{name.upper(): str(value) for name, value in FAST_ARGON2.items()},
    }


@pytest.fixture
async def exported(environ: dict[str, str], tmp_path: Path) -> set[str]:
    """The metric names of the embedded platform's /metrics after a registration, a login, an
    authenticated read and a refused request, and the ones its registry declares."""
    settings = GatewaySettings(jwt_secret=JWT_SECRET, redis_url="", data_dir=str(tmp_path))
    credentials = {"email": "grace@example.com", "password": PASSWORD}
    async with app_client(create_app(settings, environ=environ)) as client:
        assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201
        login = await client.post("/api/v1/auth/login", json=credentials)
        token = login.json()["access_token"]
        assert (await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        assert (await client.get("/api/v1/analytics/usage/me")).status_code == 401
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    served = {sample.name for family in text_string_to_metric_families(scrape.text) for sample in family.samples}
    assert "pyairtable_gateway_requests_total" in served  # the scrape saw the requests above
    assert "pyairtable_db_pool_checked_out" in served
    return served | registered_names() | SCRAPE_SERIES


async def test_every_metric_an_alert_or_a_dashboard_reads_is_exported(exported: set[str]) -> None:
    read = {("alerts.yml", rule["alert"], name) for rule in alert_rules() for name in metric_names(rule["expr"])}
    read |= {(file, title, name) for file, title, expr in dashboard_targets() for name in metric_names(expr)}
    assert len({name for _, _, name in read}) > 20  # the parsing found the names
    missing = sorted(entry for entry in read if entry[2] not in exported)
    assert missing == [], f"(file, alert or panel, metric) read but never exported: {missing}"


def test_every_alert_waits_has_a_severity_and_says_what_is_wrong() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "ServiceDown",
        "GatewayHighErrorRatio",
        "ServiceHighErrorRatio",
        "GatewayHighLatencyP99",
        "ServiceHighLatencyP99",
        "RateLimiterDegraded",
        "UpstreamBreakerOpen",
        "AirtableThrottling",
        "AirtableQueueTimeouts",
        "EventConsumerLagging",
        "EventsDeadLettered",
        "DatabasePoolSaturated",
    }
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}


def test_dashboards_are_provisioned_with_unique_uids_and_promql_panels() -> None:
    found = dashboards()
    assert {"overview.json", "gateway.json", "auth.json", "users.json", "airtable-gateway.json"} <= set(found)
    assert {"analytics.json", "airtable.json", "events.json"} <= set(found)
    uids = [dashboard["uid"] for dashboard in found.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in found.items():
        assert dashboard["title"] and dashboard["panels"], name
        for panel in dashboard["panels"]:
            assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), (name, panel)
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("promtool")
    assert executable, "promtool is missing: `make check-monitoring` installs it (Debian's prometheus package)"
    return subprocess.run([executable, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("check", "config", "prometheus.yml"),
        ("check", "config", "prometheus.local.yml"),
        ("test", "rules", "alerts.test.yml"),
    ],
    ids=" ".join,
)
def test_promtool_accepts_the_rules_their_tests_and_the_scrape_configs(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr
