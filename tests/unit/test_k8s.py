"""Invariants of the rendered Kubernetes manifests: every overlay under k8s/overlays, built by kustomize."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRD_DIR = Path(os.environ.get("CRD_DIR") or ROOT.parent / "shared" / "crds")
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
POD_KINDS = {"Deployment", "Job"}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def built() -> dict[str, list[Doc]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot run 'kubectl kustomize' on the overlays")
    out: dict[str, list[Doc]] = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"kubectl kustomize {overlay}: {proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]
    return out


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for d in docs:
        if d["kind"] in POD_KINDS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def effective_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def load_crdcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crdcheck", ROOT / "tools" / "crdcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile must switch to a numeric USER"
    return int(users[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds(built: dict[str, list[Doc]], overlay: str) -> None:
    """Every overlay renders with kubectl kustomize into a namespaced worker, API and migration Job."""
    docs = built[overlay]
    one(docs, "Deployment", "dialer-worker")
    one(docs, "Deployment", "dialer-api")
    one(docs, "Job", "dialer-migrate")
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace"), (
                f"{overlay}: {d['kind']} {d['metadata']['name']} has no namespace"
            )


def test_both_autoscaler_components_are_built() -> None:
    """Some overlay uses the KEDA component and some overlay the HPA one, so both stay buildable."""
    used = " ".join((K8S / "overlays" / o / "kustomization.yaml").read_text() for o in OVERLAYS)
    assert "components/keda" in used and "components/hpa" in used


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_exceeds_shutdown_grace(built: dict[str, list[Doc]], overlay: str) -> None:
    """terminationGracePeriodSeconds covers preStop plus DIALER_SHUTDOWN_GRACE_SECONDS in every Deployment."""
    docs = built[overlay]
    for deployment in by_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        grace = spec["terminationGracePeriodSeconds"]
        for container in spec["containers"]:
            env = effective_env(docs, container)
            assert "DIALER_SHUTDOWN_GRACE_SECONDS" in env, (
                f"{overlay}: {container['name']} has no drain budget"
            )
            drain = float(env["DIALER_SHUTDOWN_GRACE_SECONDS"])
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            assert grace > pre_stop + drain, (
                f"{overlay}: {deployment['metadata']['name']} grace {grace}s <= preStop {pre_stop}s + drain {drain}s"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployment_has_no_replicas(built: dict[str, list[Doc]], overlay: str) -> None:
    """A Deployment owned by KEDA or an HPA leaves spec.replicas out, so an apply never resets the count."""
    docs = built[overlay]
    targets = [so["spec"]["scaleTargetRef"]["name"] for so in by_kind(docs, "ScaledObject")]
    targets += [h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")]
    assert "dialer-worker" in targets, f"{overlay}: the worker has no autoscaler"
    for name in targets:
        assert "replicas" not in one(docs, "Deployment", name)["spec"], f"{overlay}: {name} sets replicas"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_and_hpa_never_target_the_same_deployment(built: dict[str, list[Doc]], overlay: str) -> None:
    """No overlay has a ScaledObject and an HPA on one Deployment (they would fight over replicas)."""
    docs = built[overlay]
    keda = {so["spec"]["scaleTargetRef"]["name"] for so in by_kind(docs, "ScaledObject")}
    hpa = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert not keda & hpa, f"{overlay}: both KEDA and an HPA scale {sorted(keda & hpa)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_trigger_metadata_values_are_strings(built: dict[str, list[Doc]], overlay: str) -> None:
    """Every ScaledObject trigger's metadata value is a string, as the CRD's map[string]string demands."""
    for so in by_kind(built[overlay], "ScaledObject"):
        assert so["spec"]["minReplicaCount"] >= 1, "workers refresh business hours: never scale to zero"
        assert so["spec"]["maxReplicaCount"] >= so["spec"]["minReplicaCount"]
        for trigger in so["spec"]["triggers"]:
            for key, value in trigger["metadata"].items():
                assert isinstance(value, str), f"{overlay}: trigger metadata {key}={value!r} is not a string"
            assert "authenticationRef" in trigger, "the DSN comes from a TriggerAuthentication"
            auth = one(built[overlay], "TriggerAuthentication", trigger["authenticationRef"]["name"])
            assert [r["parameter"] for r in auth["spec"]["secretTargetRef"]] == ["connection"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_restricted(built: dict[str, list[Doc]], overlay: str) -> None:
    """Every container is non-root (the Dockerfile's uid), read-only, unprivileged, seccomp'd, with a /tmp emptyDir."""
    uid = dockerfile_user()
    for where, spec in pod_specs(built[overlay]):
        assert spec["automountServiceAccountToken"] is False, where
        pod_sc = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = {**pod_sc, **container.get("securityContext", {})}
            name = f"{overlay} {where} {container['name']}"
            assert sc.get("runAsNonRoot") is True, name
            assert sc.get("runAsUser") == uid, f"{name}: runAsUser must be the image's uid {uid}"
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("privileged", False) is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{name}: no /tmp emptyDir"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{name}: requests"
            assert "memory" in resources.get("limits", {}), f"{name}: memory limit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_health_endpoints(built: dict[str, list[Doc]], overlay: str) -> None:
    """Deployments probe /readyz for readiness, /healthz for liveness and startup, on a declared port."""
    for deployment in by_kind(built[overlay], "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"] for p in container["ports"]}
            expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
            for probe, path in expected.items():
                get = container[probe]["httpGet"]
                assert get["path"] == path and get["port"] in ports, f"{overlay}: {container['name']} {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_policies_reach_the_right_ports(built: dict[str, list[Doc]], overlay: str) -> None:
    """dialer-callbacks:80 reaches worker 8080, dialer-api:80 reaches 8081, and the NetworkPolicies admit exactly those."""
    docs = built[overlay]
    for service, deployment, port in (
        ("dialer-callbacks", "dialer-worker", 8080),
        ("dialer-api", "dialer-api", 8081),
    ):
        svc = one(docs, "Service", service)
        pod = one(docs, "Deployment", deployment)["spec"]["template"]
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), service
        named = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        assert [(p["port"], named[p["targetPort"]]) for p in svc["spec"]["ports"]] == [(80, port)], service
        policies = [
            np
            for np in by_kind(docs, "NetworkPolicy")
            if np["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        ]
        assert len(policies) == 1, f"{overlay}: {deployment} needs exactly one NetworkPolicy"
        ingress_ports = {p["port"] for rule in policies[0]["spec"]["ingress"] for p in rule["ports"]}
        egress_ports = {p["port"] for rule in policies[0]["spec"]["egress"] for p in rule["ports"]}
        assert ingress_ports == {port}, deployment
        assert egress_ports == {53, 5432, 443}, deployment
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_selects_the_pods_and_ships_the_dashboard(
    built: dict[str, list[Doc]], overlay: str
) -> None:
    """The PodMonitor scrapes a port both workloads declare; the dashboard ConfigMap carries the sidecar label."""
    docs = built[overlay]
    monitor = one(docs, "PodMonitor", "dialer")
    for deployment in ("dialer-worker", "dialer-api"):
        template = one(docs, "Deployment", deployment)["spec"]["template"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    dashboard = one(docs, "ConfigMap", "dialer-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["dialer-dashboard.json"])
    assert by_kind(docs, "PrometheusRule"), f"{overlay}: no PrometheusRule"


# What real credentials look like; an example must look like none of them.
REAL_LOOKING = re.compile(
    r"AKIA[0-9A-Z]{16}|sk_live_|-----BEGIN|xox[abp]-|gh[pousr]_[A-Za-z0-9]{20,}|SK[0-9a-f]{32}"
    r"|[A-Za-z0-9+/=]{24,}"  # a long unbroken token; the placeholders are dash-separated words
)


def assert_fake(where: str, value: str) -> None:
    assert "CHANGE-ME" in value, f"{where}: an example secret value must say CHANGE-ME"
    assert not REAL_LOOKING.search(value), f"{where}: looks like a real credential"


def test_example_secret_files_are_fake() -> None:
    """Every *.env.example under k8s/ holds only CHANGE-ME placeholders, and no manifest holds a Secret."""
    examples = sorted(K8S.rglob("*.env.example"))
    assert examples, "an example Secret file documents the keys"
    for path in examples:
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                assert_fake(f"{path.relative_to(ROOT)} {key}", value)
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), (
                f"{path}: a Secret in a manifest"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_built_secrets_carry_no_real_looking_value(built: dict[str, list[Doc]], overlay: str) -> None:
    """Any Secret an overlay renders is the fake example, never a real-looking credential."""
    for secret in by_kind(built[overlay], "Secret"):
        values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        values.update(secret.get("stringData", {}))
        for key, value in values.items():
            assert_fake(f"{overlay} Secret {secret['metadata']['name']} {key}", value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_provider_accounts_load_like_a_worker_loads_them(
    built: dict[str, list[Doc]], overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay's providers.json builds every provider account, and its example Secret has every *_env key."""
    from dialer import providers
    from dialer.settings import Settings

    docs = built[overlay]
    accounts_map = [c for c in by_kind(docs, "ConfigMap") if "providers.json" in c.get("data", {})]
    if not accounts_map:
        pytest.skip(f"{overlay} configures no provider accounts (one simulator account)")
    text = accounts_map[0]["data"]["providers.json"]
    path = tmp_path / "providers.json"
    path.write_text(text)
    env_names = sorted({v for account in json.loads(text) for k, v in account.items() if k.endswith("_env")})
    secrets = by_kind(docs, "Secret")
    for secret in (s for s in secrets if s["metadata"]["name"] == "dialer-secrets"):
        missing = set(env_names) - set(secret.get("data", {}))
        assert not missing, f"{overlay}: dialer-secrets lacks {sorted(missing)}"
    for name in env_names:
        monkeypatch.setenv(name, "CHANGE-ME")
    worker = one(docs, "Deployment", "dialer-worker")["spec"]["template"]["spec"]["containers"][0]
    assert effective_env(docs, worker)["DIALER_PROVIDERS_FILE"] == "/etc/dialer/providers.json"
    settings = Settings.from_env({"DIALER_PROVIDERS_FILE": str(path), "DIALER_CALLBACK_SECRET": "CHANGE-ME"})
    assert sorted(providers.build(settings)) == sorted(a["name"] for a in json.loads(text))


def worker_calls_per_second(docs: list[Doc]) -> float:
    """The calls/s one worker is sized for: the KEDA trigger's target (per worker, AverageValue).

    An HPA scales on CPU and has no such figure; it is sized with the KEDA component's.
    """
    scaled = [
        so for so in by_kind(docs, "ScaledObject") if so["spec"]["scaleTargetRef"]["name"] == "dialer-worker"
    ]
    if not scaled:
        scaled = [yaml.safe_load((K8S / "components" / "keda" / "scaledobject.yaml").read_text())]
    (trigger,) = [tr for tr in scaled[0]["spec"]["triggers"] if tr["type"] == "postgresql"]
    assert trigger["metricType"] == "AverageValue", "targetQueryValue must be a per-worker figure"
    return float(trigger["metadata"]["targetQueryValue"])


def worker_max_replicas(docs: list[Doc]) -> int:
    for so in by_kind(docs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == "dialer-worker":
            return int(so["spec"]["maxReplicaCount"])
    return int(one(docs, "HorizontalPodAutoscaler", "dialer-worker")["spec"]["maxReplicas"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_max_replicas_follow_the_provider_accounts_call_rate(
    built: dict[str, list[Doc]], overlay: str, tmp_path: Path
) -> None:
    """The worker's max replicas is ceil(sum of the accounts' calls/s / calls/s per worker) + 1 spare."""
    from dialer.providers import load_accounts
    from dialer.settings import Settings

    docs = built[overlay]
    worker = one(docs, "Deployment", "dialer-worker")["spec"]["template"]["spec"]["containers"][0]
    env = {**effective_env(docs, worker), "DIALER_CALLBACK_SECRET": "CHANGE-ME"}
    secrets: dict[str, str] = {}
    if "DIALER_PROVIDERS_FILE" in env:
        (accounts_map,) = [c for c in by_kind(docs, "ConfigMap") if "providers.json" in c.get("data", {})]
        text = accounts_map["data"]["providers.json"]
        env["DIALER_PROVIDERS_FILE"] = str(tmp_path / "providers.json")
        (tmp_path / "providers.json").write_text(text)
        secrets = {v: "CHANGE-ME" for a in json.loads(text) for k, v in a.items() if k.endswith("_env")}
    accounts = load_accounts(Settings.from_env(env), secrets)
    unlimited = [a.name for a in accounts if a.max_calls_per_second <= 0]
    assert not unlimited, f"{overlay}: accounts {unlimited} have no max_calls_per_second to size workers by"
    total = sum(a.max_calls_per_second for a in accounts)
    expected = math.ceil(total / worker_calls_per_second(docs)) + 1
    assert worker_max_replicas(docs) == expected, (
        f"{overlay}: accounts allow {total:g} calls/s, so the worker's max replicas must be "
        f"ceil({total:g} / {worker_calls_per_second(docs):g}) + 1 = {expected}"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_spread_over_zones_and_nodes(built: dict[str, list[Doc]], overlay: str) -> None:
    """Worker pods spread evenly (maxSkew 1, best effort) over zones and nodes, counting only this revision's workers."""
    template = one(built[overlay], "Deployment", "dialer-worker")["spec"]["template"]
    labels = template["metadata"]["labels"]
    constraints = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
    assert set(constraints) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, overlay
    for key, c in constraints.items():
        where = f"{overlay} {key}"
        assert c["maxSkew"] == 1, where
        # DoNotSchedule would leave pods Pending in a cluster with one zone or too few nodes.
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", where
        selector = c["labelSelector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{where}: the selector matches no worker pod"
        assert selector.get("app.kubernetes.io/component") == "worker", f"{where}: counts API pods too"
        assert c.get("matchLabelKeys") == ["pod-template-hash"], f"{where}: old revision skews the spread"


def test_dockerfile_runs_the_dialer_as_the_manifests_expect() -> None:
    """The image is non-root with the manifests' uid and execs `dialer worker` (exec form, signals reach Python)."""
    text = (ROOT / "Dockerfile").read_text()
    assert dockerfile_user() == 10001
    assert 'ENTRYPOINT ["dialer"]' in text and 'CMD ["worker"]' in text
    assert "COPY queue/" in text, "the wheel force-includes queue/: the build stage needs it"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[0:1] == ["*"] or {".venv", ".git"} <= set(ignored)


def test_crdcheck_rejects_what_the_api_server_would() -> None:
    """tools/crdcheck.py rejects an unquoted trigger value and an unknown field, and accepts the real ScaledObject."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"no CRD folder at {CRD_DIR}")
    crdcheck = load_crdcheck()
    schemas = crdcheck.load_crds(CRD_DIR)
    good = yaml.safe_load((K8S / "components" / "keda" / "scaledobject.yaml").read_text())
    validator = crdcheck.jsonschema.Draft202012Validator(schemas[(good["apiVersion"], good["kind"])])
    assert list(validator.iter_errors(good)) == []
    bad = json.loads(json.dumps(good))
    bad["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 50
    bad["spec"]["pollingIntervall"] = 15
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert any("is not of type 'string'" in m for m in messages), messages
    assert any("pollingIntervall" in m for m in messages), messages
