"""The Kubernetes manifests in deploy/k8s would deploy: checked against the code and the compose file.

Each container's environment is resolved the way the kubelet would (ConfigMap keys from the
repository, Secret keys as placeholders) and handed to the service's own settings loader, so a
missing or misspelt variable fails here instead of in a crash-looping pod.
"""

import functools
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.app import create_app as create_gateway_app
from gateway.config import GatewaySettings
from shared.registry import SERVICES
from shared.settings import ServiceSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DEV_OVERLAY = ROOT / "deploy" / "k8s-dev"
KUSTOMIZATIONS = [K8S, DEV_OVERLAY]
COMPOSE = ROOT / "docker-compose.phase1.yml"
SECRET_EXAMPLE = K8S / "secrets.env.example"
NAMESPACE = "pyairtable"
CONFIG_MAP = "pyairtable-config"
SECRET = "pyairtable-secrets"
# Every service of the registry (shared/registry.py) and the gateway.
SETTINGS: dict[str, type[ServiceSettings]] = {entry.package: entry.settings() for entry in SERVICES} | {
    "gateway": GatewaySettings
}
GATEWAY_ROUTES = {entry.prefix: entry.package for entry in SERVICES}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PLACEHOLDER_SECRETS = {
    "REDIS_URL": "redis://redis.example.internal:6379/0",
    "AIRTABLE_TOKEN": "patPlaceholder.0123456789abcdef",
}


# --- loading ------------------------------------------------------------------------------------


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


@functools.cache
def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, parsed once per run (nothing here changes them)."""
    return [doc for doc in yaml.load_all(path.read_text(), Loader=Loader) if doc]


def manifests() -> list[dict[str, Any]]:
    """Every object the base kustomization applies."""
    return [doc for name in kustomization(K8S)["resources"] for doc in load_documents(K8S / name)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return of_kind("Deployment") + of_kind("Job")


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def package_of(workload: dict[str, Any]) -> str:
    package: str = only_container(workload)["args"][0]
    return package


def config_data() -> dict[str, str]:
    data: dict[str, str] = named("ConfigMap", CONFIG_MAP)["data"]
    return data


def documented_secret_keys() -> dict[str, str]:
    """KEY=value lines of secrets.env.example."""
    lines = [line for line in SECRET_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def secret_refs(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            yield variable["name"], ref


def resolved_environment(container: dict[str, Any], *, with_optional_secrets: bool = True) -> dict[str, str]:
    """The container's environment as the kubelet builds it; Secret keys get placeholders."""
    assert not container.get("envFrom"), "env is listed variable by variable"
    config = config_data()
    environ: dict[str, str] = {}
    for variable in container.get("env", []):
        name, source = variable["name"], variable.get("valueFrom", {})
        if "value" in variable:
            environ[name] = variable["value"]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] == CONFIG_MAP and ref["key"] in config, f"{name}: no key {ref['key']} in {CONFIG_MAP}"
            environ[name] = config[ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == SECRET and ref["key"] in documented_secret_keys(), f"{name}: undocumented secret"
            if with_optional_secrets or not ref.get("optional", False):
                environ[name] = placeholder_secret(ref["key"])
        else:
            raise AssertionError(f"{name}: neither a value, a ConfigMap key nor a Secret key")
    return environ


def placeholder_secret(key: str) -> str:
    if key.endswith("_DATABASE_URL"):
        database = key.removesuffix("_DATABASE_URL").lower()
        return f"postgresql://app:placeholder@postgres.example.internal:5432/pyairtable_{database}"
    return PLACEHOLDER_SECRETS.get(key, f"placeholder-{key.lower()}-{'x' * 40}")


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [item["containerPort"] for item in container.get("ports", []) if item.get("name") == port]
    assert numbers, f"{container['name']}: no container port named {port}"
    number: int = numbers[0]
    return number


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def service_for(deployment: dict[str, Any]) -> dict[str, Any]:
    services = [svc for svc in of_kind("Service") if selects(svc["spec"]["selector"], pod_labels(deployment))]
    assert len(services) == 1, f"{deployment['metadata']['name']}: expected one Service, found {len(services)}"
    return services[0]


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_documents(COMPOSE)[0]["services"]
    return services


def platform_image() -> str:
    image: str = compose_services()["gateway"]["image"]
    return image


# --- the kustomization --------------------------------------------------------------------------


def test_every_kustomization_lists_each_manifest_of_its_folder() -> None:
    folders = sorted(path.parent for path in (ROOT / "deploy").rglob("kustomization.yaml"))
    assert folders == KUSTOMIZATIONS
    for folder in folders:
        listed = {entry for entry in kustomization(folder).get("resources", []) if (folder / entry).is_file()}
        present = {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, f"{folder.relative_to(ROOT)}: listed {sorted(listed)}, present {sorted(present)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda folder: folder.name)
def test_kustomize_renders_everything_into_the_namespace(folder: Path) -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.load_all(rendered.stdout, Loader=Loader) if doc]
    listed = [
        doc
        for entry in kustomization(folder)["resources"]
        if entry.endswith(".yaml")
        for doc in load_documents(folder / entry)
    ]
    assert len(objects) == len(listed) + (len(manifests()) if folder != K8S else 0)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_every_container_runs_the_compose_image() -> None:
    name, _, tag = platform_image().partition(":")
    images = kustomization(K8S)["images"]
    assert images == [{"name": name, "newTag": tag}]
    for workload in workloads():
        assert only_container(workload)["image"] == platform_image(), workload["metadata"]["name"]


# --- commands, ports, probes ----------------------------------------------------------------------


def test_each_service_has_one_deployment_serving_its_package() -> None:
    packages = []
    for deployment in of_kind("Deployment"):
        args = only_container(deployment)["args"]
        assert args[1:] == ["serve"], deployment["metadata"]["name"]
        assert importlib.util.find_spec(f"{args[0]}.__main__") is not None, f"no package {args[0]}"
        packages.append(args[0])
    assert sorted(packages) == sorted(SETTINGS)


def test_each_service_with_a_database_has_one_migration_job() -> None:
    with_database = sorted(package for package in SETTINGS if (ROOT / package / "migrations").is_dir())
    assert with_database == sorted(entry.package for entry in SERVICES)
    jobs = of_kind("Job")
    for job in jobs:
        assert only_container(job)["args"][1:] == ["migrate"], job["metadata"]["name"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert sorted(package_of(job) for job in jobs) == with_database


def test_container_service_and_probe_ports_are_the_port_the_service_listens_on() -> None:
    for deployment in of_kind("Deployment"):
        container = only_container(deployment)
        listens_on = load_settings(SETTINGS[package_of(deployment)], resolved_environment(container)).port
        assert [port["containerPort"] for port in container["ports"]] == [listens_on]

        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                assert port_number(container, container[probe]["httpGet"]["port"]) == listens_on, probe

        service = service_for(deployment)
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        [port] = service["spec"]["ports"]
        assert port_number(container, port["targetPort"]) == listens_on
        assert port["port"] == listens_on, "the Service keeps the port the compose URLs use"


# --- environment ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_optional_secrets", [True, False], ids=["all-secrets", "required-secrets-only"])
def test_every_container_loads_its_production_settings(with_optional_secrets: bool) -> None:
    for workload in workloads():
        name, package = workload["metadata"]["name"], package_of(workload)
        environ = resolved_environment(only_container(workload), with_optional_secrets=with_optional_secrets)
        settings = load_settings(SETTINGS[package], environ)  # raises SettingsError naming a bad variable
        assert settings.is_production, name
        assert settings.redis_url.startswith("redis"), f"{name}: no REDIS_URL, replicas would not share state"
        if (ROOT / package / "migrations").is_dir():
            # Without it the service falls back to SQLite in DATA_DIR, on a read-only filesystem.
            own_url = placeholder_secret(f"{SETTINGS[package].env_prefix}_DATABASE_URL")
            assert settings.database_url == own_url, f"{name}: not its own <SERVICE>_DATABASE_URL"


def test_the_migration_job_gets_the_same_environment_as_its_service() -> None:
    for job in of_kind("Job"):
        [deployment] = [d for d in of_kind("Deployment") if package_of(d) == package_of(job)]
        assert only_container(job)["env"] == only_container(deployment)["env"], job["metadata"]["name"]


def test_compose_workloads_are_mirrored_with_their_commands_and_variables() -> None:
    for name, service in compose_services().items():
        if service.get("image") != platform_image():
            continue  # postgres and redis are managed services here
        kind = "Job" if name.endswith("-migrate") else "Deployment"
        container = only_container(named(kind, name))
        assert container["args"] == service["command"], name
        missing = set(service["environment"]) - {variable["name"] for variable in container["env"]}
        assert not missing, f"{name}: compose sets {sorted(missing)}, the manifest does not"


def test_gateway_routes_reach_the_services_that_own_them() -> None:
    gateway = named("Deployment", "gateway")
    settings = load_settings(GatewaySettings, resolved_environment(only_container(gateway)))
    deployments = {package_of(deployment): deployment for deployment in of_kind("Deployment")}
    for prefix, package in GATEWAY_ROUTES.items():
        url = urlsplit(settings.upstream_urls()[prefix])
        service = named("Service", str(url.hostname))
        assert service == service_for(deployments[package]), prefix
        assert url.port == service["spec"]["ports"][0]["port"], prefix


# --- secrets ----------------------------------------------------------------------------------------


def test_no_secret_value_is_in_the_repository() -> None:
    for path in [path for folder in KUSTOMIZATIONS for path in folder.glob("*.yaml")]:
        for doc in load_documents(path):
            if doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), f"{path.name}: a Secret with data"
            assert not doc.get("secretGenerator"), f"{path.name}: a secretGenerator"
            # No URL with a password anywhere (user:password@host).
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", yaml.safe_dump(doc)), f"{path.name}: a URL with a password"
    assert all(value == "" for value in documented_secret_keys().values()), "secrets.env.example holds names only"
    secret_names = set(documented_secret_keys())
    assert not secret_names & set(config_data()), "a secret in the ConfigMap"
    for workload in workloads():
        for variable in only_container(workload)["env"]:
            if variable["name"] in secret_names:
                assert "secretKeyRef" in variable.get("valueFrom", {}), f"{variable['name']}: not from the Secret"


def test_every_secret_key_a_container_reads_is_documented() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    referenced = {ref["key"] for workload in workloads() for _, ref in secret_refs(only_container(workload))}
    assert referenced == set(documented_secret_keys())
    for key in referenced:
        assert f"`{key}`" in readme, f"{key} is not in deploy/README.md"


# --- labels, selectors, hardening ---------------------------------------------------------------------


def test_selectors_match_the_pods_they_are_meant_for() -> None:
    for deployment in of_kind("Deployment"):
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        assert deployment["metadata"]["labels"] == pod_labels(deployment)
    for service in of_kind("Service"):
        targets = [w for w in workloads() if selects(service["spec"]["selector"], pod_labels(w))]
        assert [t["kind"] for t in targets] == ["Deployment"], f"Service {service['metadata']['name']}"
    gateway = named("Deployment", "gateway")
    assert selects(named("PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"], pod_labels(gateway))

    ingress_backend = named("Ingress", "gateway")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert ingress_backend["name"] == "gateway"
    assert ingress_backend["port"]["name"] in {port["name"] for port in named("Service", "gateway")["spec"]["ports"]}


def test_the_gateway_autoscales_and_its_replicas_are_left_to_the_autoscaler() -> None:
    hpa = named("HorizontalPodAutoscaler", "gateway")
    target = hpa["spec"]["scaleTargetRef"]
    gateway = named(target["kind"], target["name"])
    assert package_of(gateway) == "gateway"
    assert "replicas" not in gateway["spec"], "kubectl apply would reset the autoscaler's count"
    assert hpa["spec"]["minReplicas"] >= 2
    assert named("PodDisruptionBudget", "gateway")["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def protected_by(policy: dict[str, Any]) -> set[str]:
    """The Deployments whose pods a NetworkPolicy selects."""
    expressions = policy["spec"]["podSelector"]["matchExpressions"]
    return {
        d["metadata"]["name"]
        for d in of_kind("Deployment")
        if all(d["spec"]["template"]["metadata"]["labels"].get(e["key"]) in e["values"] for e in expressions)
    }


def test_only_the_gateway_and_prometheus_reach_the_services_behind_it() -> None:
    assert sorted(policy["metadata"]["name"] for policy in of_kind("NetworkPolicy")) == [
        "services-from-gateway",
        "services-from-prometheus",
    ]
    policy = named("NetworkPolicy", "services-from-gateway")
    assert protected_by(policy) == {"auth", "users", "airtable-gateway", "analytics"}
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], pod_labels(named("Deployment", "gateway")))


def test_prometheus_in_the_monitoring_namespace_reaches_every_metrics_port_it_scrapes() -> None:
    policy = named("NetworkPolicy", "services-from-prometheus")
    assert protected_by(policy) == protected_by(named("NetworkPolicy", "services-from-gateway"))
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]  # one element: both selectors must match (not either)
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    [port] = rule["ports"]
    for name in protected_by(policy):
        deployment = named("Deployment", name)
        scraped = int(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
        assert port_number(only_container(deployment), port["port"]) == scraped, name


def test_pods_run_as_the_image_user_on_a_read_only_filesystem_with_resource_limits() -> None:
    match = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile creates its user with --uid"
    image_uid = int(match.group(1))
    for workload in workloads():
        name, pod = workload["metadata"]["name"], workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == image_uid, name
        container = only_container(workload)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"


def test_the_dev_overlay_creates_the_databases_and_roles_the_compose_file_does() -> None:
    [init] = [doc for doc in load_documents(DEV_OVERLAY / "postgres.yaml") if doc["kind"] == "ConfigMap"]
    script = (ROOT / "deploy" / "postgres" / "init-databases.sh").read_text()
    assert init["data"]["init-databases.sh"] == script, "the ConfigMap's copy of init-databases.sh differs"
    created = re.findall(r'^create_database "\$\{\w+_DATABASE_NAME:-(\w+)\}"', script, flags=re.MULTILINE)
    assert len(created) == len([package for package in SETTINGS if (ROOT / package / "migrations").is_dir()])

    [statefulset] = [doc for doc in load_documents(DEV_OVERLAY / "postgres.yaml") if doc["kind"] == "StatefulSet"]
    container = only_container(statefulset)
    handed = {
        variable["name"]: ref["key"]
        for variable in container["env"]
        for ref in [variable.get("valueFrom", {}).get("secretKeyRef", {})]
        if ref
    }
    read = set(re.findall(r"\$\{(\w+_DATABASE_PASSWORD):\?", script))
    assert read <= set(handed), f"init-databases.sh reads {sorted(read - set(handed))}, the pod does not get them"
    readme = (ROOT / "deploy" / "README.md").read_text()
    for key in handed.values():
        assert f"--from-literal={key}=" in readme, f"deploy/README.md's dev Secret has no {key}"
    [redis] = [doc for doc in load_documents(DEV_OVERLAY / "redis.yaml") if doc["kind"] == "StatefulSet"]
    redis_container = only_container(redis)
    assert redis_container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"], "the dev Redis has no password"
    assert "$REDIS_PW@redis:6379/0" in readme, "the dev Secret's REDIS_URL carries no password"
    for variable in redis_container["env"]:
        assert variable["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD", variable["name"]
        assert "--from-literal=REDIS_PASSWORD=" in readme
    [volume] = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "init"]
    assert volume["configMap"]["defaultMode"] & 0o111, "the image would source the script, not run it"


# --- monitoring ---------------------------------------------------------------------------------


def test_every_pod_template_tells_prometheus_where_its_metrics_are() -> None:
    for deployment in of_kind("Deployment"):
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        [container] = template["spec"]["containers"]
        http_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "http")
        assert annotations.get("prometheus.io/scrape") == "true", deployment["metadata"]["name"]
        assert annotations.get("prometheus.io/port") == str(http_port), deployment["metadata"]["name"]
        assert annotations.get("prometheus.io/path") == "/metrics", deployment["metadata"]["name"]


def ingress_routes(path: str) -> bool:
    """Whether the Ingress sends ``path`` to the gateway (Kubernetes' Exact and Prefix matching:
    a prefix matches whole path elements)."""
    for rule in named("Ingress", "gateway")["spec"]["rules"]:
        for route in rule["http"]["paths"]:
            prefix = route["path"].rstrip("/")
            if route["pathType"] == "Exact" and path == route["path"]:
                return True
            if route["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
                return True
    return False


def test_the_public_ingress_routes_every_gateway_route_but_metrics() -> None:
    app = create_gateway_app(GatewaySettings(jwt_secret="x" * 40, redis_url=""))
    paths = {re.sub(r"\{[^}]*\}", "x", route.path) for route in app.routes}
    paths |= {f"{prefix}/anything" for prefix in GATEWAY_ROUTES} | {"/api/v1/billing/invoices"}  # EXTRA_ROUTES
    assert "/metrics" in paths
    for path in sorted(paths - {"/metrics"}):
        assert ingress_routes(path), f"{path} is served by the gateway but not routed by the Ingress"
    for path in ["/metrics", "/metrics/", "/metrics/x", "/metricsx"]:
        assert not ingress_routes(path), path
