"""deploy/kubernetes, checked offline: every resource the kustomization lists against the Kubernetes
API schemas of one pinned version (kubernetes-validate, strict: unknown fields are errors), the
Prometheus Operator resources against the fields they need, and what no schema can say: that the
ports, probe paths, settings, names and selectors agree with the app and with each other, and that
docs/kubernetes.md and docs/production.md describe these files.

There is no kubectl or kustomize here: the kustomization is read as YAML (its ``resources``,
``configMapGenerator`` and ``components``), which is all this folder uses.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator

from app.config import Settings
from app.metrics import DECLARED
from app.service.registry_state import RECORD_FILE
from app.service.signing_keys import JWKS_CACHE_SECONDS
from app.web import management, routes

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
#: The Kubernetes version the manifests are validated against (the oldest they target; it has
#: every field they use, e.g. the PDB's unhealthyPodEvictionPolicy and the CronJob's timeZone).
KUBERNETES_VERSION = "1.33"
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
BROKER_IMAGE = "token-broker:latest"


def _yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def _listed_files(kustomization: dict[str, Any]) -> list[str]:
    files = list(kustomization.get("resources", []))
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        files += generator.get("envs", []) + [f.split("=")[-1] for f in generator.get("files", [])]
    return files


def _resources() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name in _kustomization(K8S)["resources"] for doc in _yaml(K8S / name)]


RESOURCES = _resources()
COMPONENT_DIRS = sorted(p.parent for p in (K8S / "components").glob("*/kustomization.yaml"))
COMPONENT_RESOURCES = [(f"{d.name}/{name}", doc) for d in COMPONENT_DIRS
                       for name in _kustomization(d)["resources"] for doc in _yaml(d / name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in RESOURCES if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _config_env() -> dict[str, str]:
    out = {}
    for line in (K8S / "config.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(owner, pod spec) of every workload."""
    out = []
    for _, doc in RESOURCES:
        if doc["kind"] == "Deployment":
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            out.append((doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


DEPLOYMENT = _one("Deployment", "token-broker")
POD = DEPLOYMENT["spec"]["template"]["spec"]
BROKER = next(c for c in POD["containers"] if c["name"] == "broker")
POD_LABELS = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
CRONJOBS = [doc for _, doc in RESOURCES if doc["kind"] == "CronJob"]
PUBLIC_PATHS = {path for handler in routes.ROUTES for path in handler.paths}


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _env(container: dict[str, Any], name: str) -> dict[str, Any]:
    found = [e for e in container.get("env", []) if e["name"] == name]
    assert len(found) == 1, f"{container['name']}: {name} set {len(found)} times"
    return found[0]


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- the folder and the schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("folder", [K8S, *COMPONENT_DIRS], ids=lambda p: str(p.relative_to(K8S.parent)))
def test_kustomization_lists_every_file_of_its_folder(folder: Path) -> None:
    listed = _listed_files(_kustomization(folder))
    present = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert len(set(listed)) == len(listed)


def test_every_component_is_named_in_the_kustomization() -> None:
    """Components are opt-in (commented out), but a folder nobody names is a folder nobody finds."""
    text = (K8S / "kustomization.yaml").read_text()
    assert COMPONENT_DIRS
    for folder in COMPONENT_DIRS:
        assert f"components/{folder.name}" in text
        assert _kustomization(folder)["kind"] == "Component"
    subfolders = {p.name for p in K8S.iterdir() if p.is_dir() and p.name != "__pycache__"}  # keys_sync's test imports it
    assert subfolders == {"components"}


def _validation_cases() -> list[Any]:
    return [pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
            for name, doc in RESOURCES + COMPONENT_RESOURCES if doc["apiVersion"] != PROMETHEUS_OPERATOR]


@pytest.mark.parametrize("doc", _validation_cases())
def test_resource_is_valid_for_the_pinned_kubernetes_version(doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize("path, value", [
    pytest.param(("spec", "template", "spec", "containers", 0, "imagePullPolcy"), "Always", id="misspelt-field"),
    pytest.param(("spec", "template", "spec", "terminationGracePeriodSeconds"), "45s", id="wrong-type"),
    pytest.param(("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "http", id="port-not-a-number"),
])
def test_the_validator_refuses_a_broken_deployment(path: tuple[Any, ...], value: Any) -> None:
    """The schema check has teeth: the same Deployment with one field wrong is refused."""
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# The Prometheus Operator's CRDs are not in kubernetes-validate: these are the fields the operator
# needs from each (a subset of its CRD schemas), and unknown top-level spec fields are refused.
_STRING = {"type": "string", "minLength": 1}
_CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {"type": "object", "required": ["name"], "properties": {"name": _STRING}},
            "spec": {
                "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"],
                                 "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                                "additionalProperties": _STRING}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["port", "path"], "additionalProperties": False,
                        "properties": {"port": _STRING, "path": {"type": "string", "pattern": "^/"},
                                       "scheme": {"enum": ["http", "https"]},
                                       "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                       "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"}}}},
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {"type": "object", "required": ["name"], "properties": {"name": _STRING}},
            "spec": {
                "type": "object", "required": ["groups"], "additionalProperties": False,
                "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                    "properties": {"name": _STRING, "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["alert", "expr", "labels", "annotations"],
                        "additionalProperties": False,
                        "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"},
                                       "expr": _STRING,
                                       "for": {"type": "string", "pattern": "^[0-9]+[smhd]$"},
                                       "labels": {"type": "object", "required": ["severity"],
                                                  "properties": {"severity": {"enum": ["critical", "warning"]}}},
                                       "annotations": {"type": "object", "required": ["summary"]}}}}}}}},
            },
        },
    },
}


@pytest.mark.parametrize("doc", [pytest.param(doc, id=f"{name}:{doc['kind']}") for name, doc in RESOURCES
                                 if doc["apiVersion"] == PROMETHEUS_OPERATOR])
def test_prometheus_operator_resource_has_what_the_operator_needs(doc: dict[str, Any]) -> None:
    errors = list(Draft202012Validator(_CRD_SCHEMAS[doc["kind"]]).iter_errors(doc))
    assert not errors, [e.message for e in errors]


def test_both_prometheus_operator_kinds_are_shipped() -> None:
    assert sorted(doc["kind"] for _, doc in RESOURCES if doc["apiVersion"] == PROMETHEUS_OPERATOR) == [
        "PrometheusRule", "ServiceMonitor"]


# -- agreement with the app -------------------------------------------------------------------------


def test_config_env_is_a_valid_production_configuration() -> None:
    env = {**_config_env(), "BROKER_REDIS_URL": "rediss://redis.example:6379/0", "BROKER_KEYS_DIR": "/srv/keys"}
    assert all(name.startswith("BROKER_") for name in _config_env())
    settings = Settings.from_env(env)
    assert settings.issuer.startswith("https://")
    assert settings.management_host == "0.0.0.0"
    assert settings.trusted_proxies
    assert "BROKER_REDIS_URL" not in _config_env() and "BROKER_ADMIN_JWKS" not in _config_env()


def test_broker_runs_the_image_entry_point_with_one_worker() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert BROKER["command"] == ["token-broker"]
    assert 'token-broker = "app.__main__:main"' in pyproject  # the console script `pip install .` puts on PATH
    assert "RUN pip install ." in dockerfile
    args = BROKER["args"]
    assert args[0] == "serve" and _arg(args, "--workers") == "1" and _arg(args, "--host") == "0.0.0.0"
    assert BROKER["image"] == BROKER_IMAGE
    assert all(c["image"] == BROKER_IMAGE for job in CRONJOBS
               for c in job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"])


def test_ports_match_the_app_and_the_dockerfile() -> None:
    public = int(_arg(BROKER["args"], "--port"))
    assert _port(BROKER, "http") == public
    assert f"EXPOSE {public}" in (ROOT / "Dockerfile").read_text()
    assert _port(BROKER, "management") == int(_config_env()["BROKER_MANAGEMENT_PORT"]) == Settings().management_port
    assert public != _port(BROKER, "management")


@pytest.mark.parametrize("probe, path", [
    ("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
])
def test_probe_is_on_the_management_listener(probe: str, path: str) -> None:
    handler = {"/healthz": management.healthz, "/readyz": management.readyz}[path]
    assert BROKER[probe]["httpGet"] == {"path": path, "port": "management"}
    assert handler.paths == {path}  # a route of the management app (never of the public one)
    assert "/token" in PUBLIC_PATHS and path not in PUBLIC_PATHS


def test_shutdown_outlasts_prestop_drain_and_graceful_stop() -> None:
    pre_stop = BROKER["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(_config_env()["BROKER_SHUTDOWN_DRAIN"])
    graceful = int(_arg(BROKER["args"], "--graceful-timeout"))
    assert drain > 0
    assert POD["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + graceful + 5


@pytest.mark.parametrize("owner, pod", _pod_specs(), ids=[owner for owner, _ in _pod_specs()])
def test_pod_is_hardened(owner: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's broker user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert "useradd --system --uid 10001" in (ROOT / "Dockerfile").read_text()


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = _one("Namespace", "token-broker")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert _kustomization(K8S)["namespace"] == "token-broker"


def test_signing_keys_are_the_whole_secret_mounted_read_only() -> None:
    keys_dir = _env(BROKER, "BROKER_KEYS_DIR")["value"]
    assert "BROKER_KEYS_DIR=" + keys_dir in (ROOT / "Dockerfile").read_text()
    mount = next(m for m in BROKER["volumeMounts"] if m["name"] == "signing-keys")
    assert mount == {"name": "signing-keys", "mountPath": keys_dir + "/signing", "readOnly": True}  # no subPath
    volume = next(v for v in POD["volumes"] if v["name"] == "signing-keys")
    assert volume["secret"]["secretName"] == "token-broker-signing-keys"
    assert "items" not in volume["secret"]  # every key of the Secret, whatever the kids
    assert volume["secret"]["defaultMode"] == 0o440
    assert POD["securityContext"]["fsGroup"] == POD["securityContext"]["runAsGroup"]
    assert "data" not in _one("Secret", "token-broker-signing-keys")  # shipped empty
    # The pods read the registry's id from the Secret's entry (keys_sync.py copies it as the Jobs'
    # default record); the Jobs, which share config.env, keep that default in their writable copy.
    assert _env(BROKER, "BROKER_REGISTRY_RECORD")["value"] == f"{keys_dir}/signing/{RECORD_FILE}"
    assert "BROKER_REGISTRY_RECORD" not in _config_env()
    for job in CRONJOBS:
        [container] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert "BROKER_REGISTRY_RECORD" not in {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize("owner, pod", _pod_specs(), ids=[owner for owner, _ in _pod_specs()])
def test_secrets_come_from_references_and_no_admin_key_is_generated(owner: str, pod: dict[str, Any]) -> None:
    for container in pod["containers"]:
        admin = _env(container, "BROKER_ADMIN_JWKS")
        assert admin["valueFrom"]["configMapKeyRef"] == {"name": "token-broker-admin-jwks", "key": "jwks.json"}
        assert "optional" not in admin["valueFrom"]["configMapKeyRef"]
        for env in container.get("env", []):
            if env["name"] == "BROKER_REDIS_URL":
                assert env["valueFrom"] == {"secretKeyRef": {"name": "token-broker-redis", "key": "url"}}
        assert container["envFrom"] == [{"configMapRef": {"name": "token-broker-config"}}]
    assert "valueFrom" in _env(BROKER, "BROKER_REDIS_URL")


def test_selectors_find_the_broker_pods() -> None:
    assert "replicas" not in DEPLOYMENT["spec"]  # the HPA owns the count
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"] == POD_LABELS
    for kind, name in [("Service", "token-broker"), ("Service", "token-broker-management")]:
        assert _matches(_one(kind, name)["spec"]["selector"], POD_LABELS)
    assert _matches(_one("PodDisruptionBudget", "token-broker")["spec"]["selector"]["matchLabels"], POD_LABELS)
    for _, doc in RESOURCES + COMPONENT_RESOURCES:
        if doc["kind"] == "NetworkPolicy":
            assert doc["spec"]["podSelector"]["matchLabels"] == POD_LABELS
    for constraint in POD["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == POD_LABELS
    target = _one("HorizontalPodAutoscaler", "token-broker")["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "token-broker"}


def test_public_service_exposes_the_public_port_only() -> None:
    ports = _one("Service", "token-broker")["spec"]["ports"]
    assert [(p["name"], p["targetPort"]) for p in ports] == [("http", "http")]
    management_service = _one("Service", "token-broker-management")["spec"]
    assert management_service["clusterIP"] == "None"
    assert [p["targetPort"] for p in management_service["ports"]] == ["management"]


def test_service_monitor_scrapes_metrics_on_the_management_port() -> None:
    monitor = _one("ServiceMonitor", "token-broker")["spec"]
    service = _one("Service", "token-broker-management")
    assert _matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not _matches(monitor["selector"]["matchLabels"], _one("Service", "token-broker")["metadata"]["labels"])
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and management.metrics.paths == {"/metrics"}


def test_network_policy_admits_the_ingress_controller_and_prometheus_only() -> None:
    policy = _one("NetworkPolicy", "token-broker")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    admitted = {rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]:
                [p["port"] for p in rule["ports"]] for rule in policy["ingress"]}
    assert admitted == {"ingress-nginx": ["http"], "monitoring": ["management"]}
    egress_ports = sorted({p["port"] for rule in policy["egress"] for p in rule["ports"]})
    assert egress_ports == [53, 6379, 26379]  # DNS, Redis, Sentinel: no HTTPS unless the component is on
    [component] = [doc for _, doc in COMPONENT_RESOURCES if doc["kind"] == "NetworkPolicy"]
    assert [p["port"] for rule in component["spec"]["egress"] for p in rule["ports"]] == [443]


def _haproxy_public_paths() -> set[str]:
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    public = text.split("frontend public", 1)[1].split("frontend ", 1)[0]
    [line] = [line for line in public.splitlines() if line.strip().startswith("acl allowed path ")]
    return set(line.split()[3:])


def test_ingress_routes_the_public_paths_only_over_tls() -> None:
    ingress = _one("Ingress", "token-broker")["spec"]
    [rule] = ingress["rules"]
    paths = rule["http"]["paths"]
    assert all(p["pathType"] == "Exact" for p in paths)
    assert {p["path"] for p in paths} == _haproxy_public_paths()  # the same list as the compose edge
    assert {p["path"] for p in paths} <= PUBLIC_PATHS
    assert not any(p["path"].startswith("/admin") for p in paths)
    for p in paths:
        assert p["backend"]["service"] == {"name": "token-broker", "port": {"name": "http"}}
    issuer_host = _config_env()["BROKER_ISSUER"].removeprefix("https://")
    assert rule["host"] == issuer_host
    assert ingress["tls"] == [{"hosts": [issuer_host], "secretName": "token-broker-tls"}]


def test_key_jobs_may_touch_one_secret_and_run_shipped_tools() -> None:
    role = _one("Role", "token-broker-keys")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": ["token-broker-signing-keys"], "verbs": ["get", "update"]}]
    binding = _one("RoleBinding", "token-broker-keys")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "token-broker-keys", "namespace": "token-broker"}]
    assert _one("ServiceAccount", "token-broker")["automountServiceAccountToken"] is False
    generators = {g["name"]: g for g in _kustomization(K8S)["configMapGenerator"]}
    assert generators["token-broker-keys-sync"]["files"] == ["keys_sync.py"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "WORKDIR /srv/app" in dockerfile and "scripts/rotate_signing_key.py" in dockerfile
    for job in CRONJOBS:
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "token-broker-keys"
        [container] = pod["containers"]
        script = container["args"][0]
        commands = [shlex.split(line) for line in script.splitlines() if line.strip()]
        # A private copy first, the Secret replaced last (only if still the one copied).
        assert commands[0] == ["python", "/opt/keys-sync/keys_sync.py", "pull"]
        assert commands[-1] == ["python", "/opt/keys-sync/keys_sync.py", "push"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keys-sync")
        volume = next(v for v in pod["volumes"] if v["name"] == "keys-sync")
        assert mount["mountPath"] == "/opt/keys-sync" and volume["configMap"]["name"] == "token-broker-keys-sync"
        work = _env(container, "BROKER_KEYS_DIR")["value"]
        assert any(work.startswith(m["mountPath"] + "/") for m in container["volumeMounts"] if m["name"] == "work")


def test_rotation_waits_out_the_jwks_cache_and_the_secret_refresh() -> None:
    rotate = _one("CronJob", "token-broker-rotate")
    [container] = rotate["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    wait = int(_env(container, "ROTATE_WAIT_SECONDS")["value"])
    assert wait >= JWKS_CACHE_SECONDS + 60 + 30  # JWKS max-age + the kubelet's refresh + margin
    assert rotate["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > wait
    assert "--force" not in container["args"][0]
    assert _one("CronJob", "token-broker-keys-init")["spec"]["suspend"] is True
    retire = _one("CronJob", "token-broker-retire-expired")
    assert "--max-token-lifetime" not in retire["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]


# -- alerts -----------------------------------------------------------------------------------------


def _alerts() -> list[dict[str, Any]]:
    rule = _one("PrometheusRule", "token-broker")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_uses_metrics_the_broker_declares(alert: dict[str, Any]) -> None:
    declared = {m.name for m in DECLARED}
    used = set(re.findall(r"\b(broker_[a-z_]+)", alert["expr"]))
    assert used or "up{" in alert["expr"]
    assert used <= declared, used - declared


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_production_guide_shows_the_alert_as_shipped(alert: dict[str, Any]) -> None:
    guide = (ROOT / "docs" / "production.md").read_text()
    assert f"alert: {alert['alert']}" in guide
    expr = " ".join(alert["expr"].split())
    assert expr in " ".join(guide.split())


def test_alerts_cover_the_failure_modes() -> None:
    exprs = " ".join(a["expr"] for a in _alerts())
    for needed in ('status="503"', "broker_redis_errors_total", "broker_registry_lost",
                   "broker_signing_key_reload_errors_total", 'policy!="noeviction"', "broker_replays_rejected_total"):
        assert needed in exprs


# -- the docs ---------------------------------------------------------------------------------------


def _shipped_files() -> list[str]:
    return sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.mark.parametrize("name", _shipped_files())
def test_kubernetes_doc_names_every_file(name: str) -> None:
    assert f"`{name}`" in (ROOT / "docs" / "kubernetes.md").read_text()


@pytest.mark.parametrize("doc", ["kubernetes.md", "production.md"])
def test_files_the_doc_names_exist(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text()
    named = set(re.findall(r"`((?:[\w.-]+/)*[\w.-]+\.(?:yaml|env|py|cfg|md))`", text))
    named |= set(re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", text))
    assert named
    missing = sorted(n for n in named if not any((base / n).exists() for base in (K8S, ROOT, ROOT / "docs")))
    # docs/settings.md (every BROKER_* setting) is generated by scripts/gen_settings_doc.py, which
    # lands with it; the guides link to it instead of repeating the settings.
    assert [n for n in missing if n != "settings.md"] == []
