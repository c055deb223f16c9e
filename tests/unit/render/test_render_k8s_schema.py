"""Every rendered Kubernetes object validates against the official OpenAPI-derived JSON schema of
Kubernetes 1.30 (the ``kubernetes-validate`` package, strict: unknown fields are errors), and the
kustomization builds offline with ``kubectl kustomize``.

``kubectl apply --dry-run=client`` is attempted too; the kubectl on this machine (1.32, Debian package from
the Google Cloud SDK) needs an API server for discovery even in client dry-run, so that test skips with the
error kubectl gave when none answers.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from colo.plan import inventory_slots, plan, require_complete
from colo.render.k8s import KUBERNETES_VERSION, K8sOptions, render_k8s
from colo.spec import load_config

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "cluster" / "colo.yaml"
GOLDEN_K8S = ROOT / "examples" / "cluster" / "rendered" / "k8s"
CRD_KINDS = {"ServiceMonitor"}  # prometheus-operator CRD: not in Kubernetes' own schema
VERSION = f"{KUBERNETES_VERSION}.0"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _rendered(**opts: Any) -> dict[str, str]:
    config = load_config(EXAMPLE)
    p = require_complete(plan(config, inventory_slots(config)))
    return render_k8s(config, p, config_text=EXAMPLE.read_text(), options=K8sOptions(**opts)).files


def _objects(files: dict[str, str]) -> list[dict[str, Any]]:
    objs = []
    for rel, text in sorted(files.items()):
        if rel.endswith(".yaml") and rel != "kustomization.yaml":
            objs += [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    return objs


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return _objects(_rendered(service_monitor=True))


_VALIDATORS: dict[tuple[str, str], Any] = {}


def _validator(obj: dict[str, Any]) -> Any:
    """kubernetes-validate's own strict schema file for the object's kind, compiled once per kind.

    The same files and the same Draft 2020-12 validator as ``kubernetes_validate.validate`` (which reloads
    them on every call: 50 ms an object); the first object of each kind also goes through that function.
    """
    key = (obj["apiVersion"], obj["kind"])
    if key not in _VALIDATORS:
        kubernetes_validate.validate(obj, VERSION, strict=True)
        group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
        base = f"kubernetes-json-schema/v{VERSION}-local-strict"
        schema = schema_contents(f"{base}/{obj['kind'].lower()}-{group}.json", VERSION)
        defs = schema_contents(f"{base}/_definitions.json", VERSION)
        registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
        _VALIDATORS[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return _VALIDATORS[key]


def test_every_object_validates_against_kubernetes_schema(objects: list[dict[str, Any]]) -> None:
    kinds: dict[str, int] = {}
    for obj in objects:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        if obj["kind"] in CRD_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            _validator(obj).validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:  # pragma: no cover
            pytest.fail(f"{name} is not valid Kubernetes {KUBERNETES_VERSION}: {exc}")
    assert kinds == {
        "Namespace": 1,
        "ConfigMap": 1,
        "DaemonSet": 1,
        "Service": 91,
        "ServiceMonitor": 1,
        "Deployment": 90,
    }


def test_the_validator_catches_a_broken_object(objects: list[dict[str, Any]]) -> None:
    """The schema check is real: a misspelt field and a wrong type are refused."""
    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["hostIpc"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        _validator(deployment).validate(deployment)
    deployment["spec"]["template"]["spec"].pop("hostIpc")
    _validator(deployment).validate(deployment)
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        _validator(deployment).validate(deployment)


def test_service_monitor_has_no_packaged_schema_and_is_checked_by_hand(objects: list[dict[str, Any]]) -> None:
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, VERSION, strict=True)
    # The fields prometheus-operator's monitoring.coreos.com/v1 ServiceMonitor requires and uses here.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    service = next(o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP"))
    assert spec["selector"]["matchLabels"] == service["spec"]["selector"]
    assert spec["endpoints"] == [
        {
            "port": "api",
            "path": "/metrics",
            "interval": "15s",
            "authorization": {"type": "Bearer", "credentials": {"name": "colo-api-token", "key": "token"}},
        }
    ]
    assert service["spec"]["ports"][0]["name"] == "api"


def test_pods_ask_only_for_the_host_access_mps_needs(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["hostIPC"] is True
        assert "hostNetwork" not in pod and "hostPID" not in pod
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
        host_paths = sorted(v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v)
        if obj["kind"] == "DaemonSet":
            assert host_paths == ["/dev/shm", "/var/lib/colo"]
        else:
            assert host_paths == ["/dev/shm", "/var/lib/colo/mps"]
            assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_builds_offline(tmp_path: Path) -> None:
    """`kubectl kustomize` (kustomize built into kubectl) needs no cluster: it must list every object."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(GOLDEN_K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(built) == len(_objects(dict(_read(GOLDEN_K8S))))
    assert {d["metadata"].get("namespace") for d in built if d["kind"] != "Namespace"} == {"colo"}


def _read(base: Path) -> dict[str, str]:
    return {p.relative_to(base).as_posix(): p.read_text() for p in base.rglob("*.yaml")}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_client_dry_run(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"  # empty: never talk to a cluster a developer has configured
    kubeconfig.write_text("")
    result = subprocess.run(
        ["kubectl", "apply", "--dry-run=client", "--request-timeout=5s", "-k", str(GOLDEN_K8S)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    if result.returncode != 0 and ("connection refused" in result.stderr or "server" in result.stderr):
        first = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
        pytest.skip(f"kubectl apply --dry-run=client needs an API server for discovery here: {first[:200]}")
    assert result.returncode == 0, result.stderr
