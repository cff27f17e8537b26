"""The Kustomize manifests, checked on what `kubectl kustomize` renders for every
overlay: schema validity, hardening, probes, secrets, shutdown, scaling, policy."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploytools import (
    BASE,
    HERE,
    K8S,
    KUBERNETES_VERSION,
    METRICS_PORT,
    OVERLAYS,
    REPO,
    RUNTIME_UID,
    config_data,
    containers,
    dashboard,
    find,
    one,
    project_version,
    render,
    run,
)

CLUSTER_SCOPED = {"Namespace"}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json",
}
SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|SECRET|PRIVATE|CREDENTIAL", re.I)


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed; .ci/run must: pip install kubernetes-validate"
        )
    return kubernetes_validate


def _validate_builtin(obj: dict[str, Any]) -> None:
    kv = _kubernetes_validate()
    try:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {path}")


def _validate_crd(obj: dict[str, Any]) -> None:
    import jsonschema
    import referencing

    kv = _kubernetes_validate()
    defs_dir = Path(kv.__file__).parent / "kubernetes-json-schema"
    version = ".".join(KUBERNETES_VERSION.split(".")[:2])
    definitions = json.loads(
        (defs_dir / f"v{version}.0-local-strict" / "_definitions.json").read_text()
    )
    schema_file = CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])]
    schema = json.loads((HERE / "schemas" / schema_file).read_text())
    registry = referencing.Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json",
        referencing.Resource.from_contents(definitions),
    )
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
        f"{e.message} at {'/'.join(map(str, e.absolute_path))}" for e in errors
    )


# --------------------------------------------------------------------- render


def test_every_overlay_directory_is_tested() -> None:
    shipped = {p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml")}
    assert shipped, "no overlays found"
    assert shipped <= set(OVERLAYS.values()), "add new overlays to deploytools.OVERLAYS"


def test_renders_the_expected_objects(overlay: str, objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    expected = {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PrometheusRule",
    }
    assert expected <= kinds, f"missing: {expected - kinds}"
    if overlay.startswith("prod"):
        assert "ScaledObject" in kinds
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "duplicate objects"


def test_every_object_validates(objects: list[dict[str, Any]]) -> None:
    checked = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            _validate_crd(obj)
        else:
            _validate_builtin(obj)
        checked += 1
    assert checked == len(objects)


def test_crd_schemas_reject_a_typo() -> None:
    """The hand-written CRD schemas are strict: a misspelt field fails."""
    objects = yaml.safe_load_all((K8S / "components" / "keda" / "scaledobject.yaml").read_text())
    (scaled,) = [o for o in objects if o]
    scaled["metadata"]["namespace"] = "x"
    _validate_crd(scaled)
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    with pytest.raises(AssertionError, match="maxReplicas"):
        _validate_crd(scaled)


def test_everything_lands_in_one_namespace(overlay: str, objects: list[dict[str, Any]]) -> None:
    namespace = one(objects, "Namespace")
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == name, (
                f"{obj['kind']}/{obj['metadata']['name']} is not in namespace {name}"
            )


def test_dev_and_prod_differ_as_documented() -> None:
    dev = render(OVERLAYS["dev"])
    prod = render(OVERLAYS["prod"])
    dev_deploy = one(dev, "Deployment")
    assert dev_deploy["spec"]["replicas"] == 1
    assert config_data(dev, dev_deploy)["FORWARDER_LOG_FORMAT"] == "console"
    assert not find(dev, "ScaledObject")
    prod_deploy = one(prod, "Deployment")
    assert config_data(prod, prod_deploy)["FORWARDER_LOG_FORMAT"] == "json"
    assert one(prod, "ScaledObject")["spec"]["minReplicaCount"] >= 3
    assert one(dev, "Namespace")["metadata"]["name"] != one(prod, "Namespace")["metadata"]["name"]
    assert (
        config_data(dev, dev_deploy)["FORWARDER_KAFKA_GROUP_ID"]
        != config_data(prod, prod_deploy)["FORWARDER_KAFKA_GROUP_ID"]
    ), "dev must not join prod's consumer group"


# ------------------------------------------------------------------ hardening


def test_pod_and_containers_are_hardened(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == RUNTIME_UID
    assert pod_sc["runAsGroup"] == RUNTIME_UID
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False, "service links inject FORWARDER_* variables"
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_namespace), host_namespace
    for container in containers(deployment):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["capabilities"].get("add")
        assert sc.get("runAsNonRoot", pod_sc["runAsNonRoot"]) is True
        assert sc.get("runAsUser", RUNTIME_UID) == RUNTIME_UID
        assert sc.get("seccompProfile", pod_sc["seccompProfile"])["type"] == "RuntimeDefault"


def test_only_tmp_is_writable(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for container in containers(deployment):
        writable = [m for m in container.get("volumeMounts", []) if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"]
        assert "emptyDir" in volumes[writable[0]["name"]]
        assert volumes[writable[0]["name"]]["emptyDir"].get("sizeLimit"), "bound /tmp"


def test_resources_are_requested_and_memory_is_limited(objects: list[dict[str, Any]]) -> None:
    for container in containers(one(objects, "Deployment")):
        resources = container["resources"]
        assert resources["requests"]["cpu"]
        assert resources["requests"]["memory"]
        assert resources["limits"]["memory"]
        assert _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert match, quantity
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def test_image_is_pinned_to_the_project_version(objects: list[dict[str, Any]]) -> None:
    for container in containers(one(objects, "Deployment")):
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"untagged {image}"
        assert not image.endswith(":latest")
        assert image.endswith(f":{project_version()}") or "@sha256:" in image


# --------------------------------------------------------- probes and ports


def test_probes_hit_the_forwarder_endpoints(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["FORWARDER_METRICS_PORT"]["value"] == str(METRICS_PORT)
    assert "FORWARDER_METRICS_PORT" not in config_data(objects, deployment)
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe_name, path in expected.items():
        probe = container[probe_name]
        assert probe["httpGet"]["path"] == path
        port = probe["httpGet"]["port"]
        assert ports.get(port, port) == METRICS_PORT
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_graceful_shutdown_fits_in_the_grace_period(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    shutdown = float(config_data(objects, deployment).get("FORWARDER_SHUTDOWN_TIMEOUT_SECONDS", 20))
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= shutdown + 5, "leave the drain time to commit and leave the group"
    for container in containers(deployment):
        assert container.get("command") is None, "keep the image's exec-form ENTRYPOINT"
        assert container["args"] == ["run"]


def test_rolling_update_keeps_every_member(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] == 1


def test_pods_spread_over_zones_and_nodes(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in constraints:
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()


# ------------------------------------------------------------------- secrets


def test_no_secret_is_rendered(objects: list[dict[str, Any]]) -> None:
    """Secrets are created out of band; applying an overlay must never overwrite one."""
    assert not find(objects, "Secret")


def test_token_comes_from_a_mounted_secret_file(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    settings = config_data(objects, deployment)
    assert "FORWARDER_LEGITI_API_TOKEN" not in env
    assert "FORWARDER_LEGITI_API_TOKEN" not in settings
    token_file = env["FORWARDER_LEGITI_API_TOKEN_FILE"]["value"]
    mounts = [m for m in container["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1
    assert mounts[0].get("readOnly") is True
    assert "subPath" not in mounts[0], "a subPath mount never sees the rotated token"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    assert volume["secret"]["secretName"] == "forwarder-legiti-api-token"
    assert not volume["secret"].get("optional")
    keys = {item["path"]: item["key"] for item in volume["secret"].get("items", [])}
    relative = token_file.removeprefix(mounts[0]["mountPath"] + "/")
    assert keys.get(relative, relative) == "token"


def test_no_secret_value_is_written_into_the_manifests(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    for container in containers(deployment):
        for var in container.get("env", []):
            if SECRET_WORDS.search(var["name"]) and not var["name"].endswith("_FILE"):
                assert "value" not in var, f"{var['name']} is a literal"
                assert "secretKeyRef" in var["valueFrom"]
    for key in config_data(objects, deployment):
        assert not SECRET_WORDS.search(key) or key.endswith("_FILE"), f"{key} in a ConfigMap"
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    sasl = env["FORWARDER_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert sasl["name"] == "forwarder-kafka-sasl"


def test_secret_example_holds_only_placeholders() -> None:
    example = BASE / "secret.example.yaml"
    secrets = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert {s["metadata"]["name"] for s in secrets} == {
        "forwarder-legiti-api-token",
        "forwarder-kafka-sasl",
        "forwarder-kafka-tls",
    }
    for secret in secrets:
        _validate_builtin(secret)
        assert "data" not in secret
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE_WITH_"), value
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]


# ------------------------------------------------------------ configuration


def _documented_keys() -> dict[str, str]:
    """FORWARDER_* keys in base/forwarder.env (set or commented out) -> their comment."""
    docs: dict[str, str] = {}
    comment: list[str] = []
    for raw in (BASE / "forwarder.env").read_text().splitlines():
        line = raw.strip()
        setting = re.fullmatch(r"#?\s*(FORWARDER_[A-Z0-9_]+)=.*", line)
        if setting:
            docs[setting.group(1)] = " ".join(comment)
        elif line.startswith("#"):
            comment.append(line.lstrip("# "))
            continue
        comment = []
    return docs


def test_configmap_documents_every_key_it_sets(objects: list[dict[str, Any]]) -> None:
    docs = _documented_keys()
    settings = config_data(objects, one(objects, "Deployment"))
    assert settings
    for key in settings:
        assert key in docs, f"{key} is set but not documented in base/forwarder.env"
        assert len(docs[key]) >= 20, f"{key} has no real comment above it"


def test_every_forwarder_setting_of_the_contract_is_documented() -> None:
    contract = {
        "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPICS", "KAFKA_GROUP_ID", "KAFKA_AUTO_OFFSET_RESET",
        "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
        "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE", "DLQ_TOPIC",
        "LEGITI_BASE_URL", "RATE_LIMIT_LOGIN", "RATE_LIMIT_LOGOUT", "RATE_LIMIT", "POLICY_FILE",
        "MAX_IN_FLIGHT", "DEDUPE_TTL_SECONDS", "DEDUPE_MAX_ENTRIES", "RETRY_MAX_ELAPSED_SECONDS",
        "HTTP_TIMEOUT_SECONDS", "SHUTDOWN_TIMEOUT_SECONDS", "LOG_LEVEL", "LOG_FORMAT",
        "CONFIG_FILE",
    }  # fmt: skip
    # Set in deployment.yaml instead, tied to the pod spec (port, mounts, Secret).
    in_deployment = {"METRICS_PORT", "LEGITI_API_TOKEN_FILE", "KAFKA_SASL_PASSWORD"}
    docs = _documented_keys()
    missing = {k for k in contract if f"FORWARDER_{k}" not in docs}
    assert not missing, f"not documented in base/forwarder.env: {sorted(missing)}"
    text = (BASE / "deployment.yaml").read_text()
    for key in in_deployment:
        assert f"name: FORWARDER_{key}" in text


def test_rendered_configuration_passes_check_config(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """`forwarder check-config` accepts exactly what each overlay gives the container."""
    forwarder = Path(sys.executable).parent / "forwarder"
    assert forwarder.exists(), "the forwarder console script is not installed in this venv"
    deployment = one(objects, "Deployment")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    env.update(config_data(objects, deployment))
    token = tmp_path / "token"
    token.write_text("tok-check-config-0123456789\n")
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["name"] == "FORWARDER_REDIS_URL":
            env[var["name"]] = "rediss://:secret-from-kubernetes@redis:6379/0"
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = "secret-from-kubernetes"
    env["FORWARDER_LEGITI_API_TOKEN_FILE"] = str(token)
    proc = run([str(forwarder), "check-config"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tok-check-config" not in proc.stdout + proc.stderr
    assert "secret-from-kubernetes" not in proc.stdout + proc.stderr
    assert env["FORWARDER_KAFKA_BOOTSTRAP_SERVERS"] in proc.stdout


# ------------------------------------------------------- service and scraping


def test_service_and_servicemonitor_scrape_the_metrics_port(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    link_prefix = service["metadata"]["name"].upper().replace("-", "_")
    assert not link_prefix.startswith("FORWARDER"), "its link variables would be FORWARDER_*"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["targetPort"] == "metrics"
    monitor = one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_disruption_budget_covers_the_pods(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pdb = one(objects, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_network_policy_allows_only_what_the_forwarder_needs(
    objects: list[dict[str, Any]],
) -> None:
    deployment = one(objects, "Deployment")
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]

    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    (source,) = ingress["from"]
    assert set(source) == {"namespaceSelector"}
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }

    allowed = {("UDP", 53, 53), ("TCP", 53, 53), ("TCP", 9092, 9098), ("TCP", 443, 443)}
    if _shares_redis(deployment):
        allowed.add(("TCP", 6379, 6380))
    seen = set()
    for rule in policy["egress"]:
        for port in rule["ports"]:
            seen.add((port["protocol"], port["port"], port.get("endPort", port["port"])))
    assert seen == allowed


def _shares_redis(deployment: dict[str, Any]) -> bool:
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return any(var["name"] == "FORWARDER_REDIS_URL" for var in env)


def test_the_redis_component_wires_the_url_from_a_secret() -> None:
    """The URL may hold the password: it comes from a Secret, never a literal or the
    ConfigMap, and the Secret is required (a typo must not silently mean no sharing)."""
    objects = render(OVERLAYS["prod-redis (fixture)"])
    deployment = one(objects, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    source = env["FORWARDER_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert source == {"name": "forwarder-redis", "key": "url"}
    assert "FORWARDER_REDIS_URL" not in config_data(objects, deployment)
    example = K8S / "components" / "redis" / "secret.example.yaml"
    (secret,) = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert secret["metadata"]["name"] == "forwarder-redis"
    assert "REPLACE_WITH" in secret["stringData"]["url"]
    assert not any(
        _shares_redis(one(render(OVERLAYS[name]), "Deployment")) for name in ("dev", "prod")
    )


# ------------------------------------------------------------------ scaling


def test_keda_scales_on_lag_up_to_the_partitions(
    overlay: str, objects: list[dict[str, Any]]
) -> None:
    scaled = find(objects, "ScaledObject")
    if not overlay.startswith("prod"):
        assert not scaled
        return
    (scaled_object,) = scaled
    deployment = one(objects, "Deployment")
    spec = scaled_object["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"]["envSourceContainerName"] == "forwarder"
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert int(meta["lagThreshold"]) > 0
    assert meta["allowIdleConsumers"] == "false", "never more replicas than partitions"
    settings = config_data(objects, deployment)
    for key in ("bootstrapServersFromEnv", "consumerGroupFromEnv"):
        assert meta[key] in settings, f"{meta[key]} must be in the ConfigMap for KEDA"
    assert meta["offsetResetPolicy"] == settings["FORWARDER_KAFKA_AUTO_OFFSET_RESET"]
    if "authenticationRef" in trigger:
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"].get("env", []):
            assert ref["name"] in settings
        assert settings["FORWARDER_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_")


def test_dashboard_is_shipped_for_the_grafana_sidecar(objects: list[dict[str, Any]]) -> None:
    board = dashboard(objects)
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for topic in (
        "action type",
        "delivery latency",
        "lag per partition",
        "retries",
        "dead letters by reason",
        "response code",
        "rate-limit delay",
    ):
        assert topic in titles, f"no panel about {topic}"
    latency = next(p for p in board["panels"] if "delivery latency" in p["title"].lower())
    exprs = " ".join(t["expr"] for t in latency["targets"])
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs
    panel_ids = [p["id"] for p in board["panels"]]
    assert len(panel_ids) == len(set(panel_ids))


# ------------------------------------------------------------------- README


def test_readme_yaml_examples_are_valid_objects() -> None:
    """The Kubernetes objects shown in deploy/kubernetes/README.md (plain HPA, patches)."""
    text = (K8S / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    checked = 0
    for block in blocks:
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= doc.keys():
                if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
                    _validate_crd(doc)
                elif not doc["apiVersion"].startswith("kustomize."):
                    _validate_builtin(doc)
                checked += 1
    assert checked >= 1, "the README shows the plain HPA alternative as YAML"


def test_readme_paths_exist() -> None:
    text = (K8S / "README.md").read_text()
    for path in set(re.findall(r"\bdeploy/kubernetes/[\w./-]+", text)):
        assert (REPO / path.rstrip(".")).exists(), f"README mentions missing {path}"
