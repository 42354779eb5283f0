"""docker-compose.yml, Dockerfile and .dockerignore: schema-valid and wired together (no Docker needed)."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENDORED_SCHEMA = ROOT / "deploy" / "compose-spec.json"
UPSTREAM_SCHEMA = ROOT.parent / "shared" / "data" / "compose-spec.json"

APP_SERVICES = ("migrate", "api", "worker-gpu0", "worker-cpu", "flower")
STACK_SERVICES = ("api", "worker-gpu0", "worker-cpu")
WORKERS = ("worker-gpu0", "worker-cpu")
KNOWN_EXECUTABLES = {"inferq", "gunicorn", "redis-server"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(VENDORED_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as a dict, whether written as a mapping or as KEY=VALUE items."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def argv_of(command: str | list[str] | None) -> list[str]:
    """A compose command or healthcheck as an argument list (compose splits string commands like a shell)."""
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile; continuations joined, comments dropped."""
    logical, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            logical.append(pending)
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def exec_form(arguments: str) -> list[str]:
    """The argv of a CMD/ENTRYPOINT, in JSON (exec) form or shell form."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def copied_sources() -> list[str]:
    """The source paths of every COPY in the Dockerfile, relative to the build context."""
    sources = []
    for op, args in dockerfile_instructions():
        if op == "COPY":
            sources += [part.removeprefix("./").rstrip("/") for part in shlex.split(args)[:-1]]
    return sources


def test_compose_file_validates_against_the_vendored_schema(compose, validator):
    """docker-compose.yml, after YAML anchors and merge keys are resolved, is valid Compose Specification."""
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_file_has_no_obsolete_version_key(compose):
    """The file follows the Compose Specification, which has no top-level version key."""
    assert "version" not in compose


def _bad_depends_on(services: dict[str, Any]) -> None:
    services["api"]["depends_on"] = {"postgres": "healthy"}


def _unknown_service_key(services: dict[str, Any]) -> None:
    services["api"]["restart_policy"] = "always"


def _device_without_capabilities(services: dict[str, Any]) -> None:
    services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")


@pytest.mark.parametrize("mutate", [_bad_depends_on, _unknown_service_key, _device_without_capabilities])
def test_schema_rejects_a_broken_copy_of_the_compose_file(compose, validator, mutate):
    """A mutated copy of the compose file fails validation, so the validator really validates."""
    broken = copy.deepcopy(compose)
    mutate(broken["services"])
    assert not validator.is_valid(broken)


def test_vendored_schema_is_byte_identical_to_the_shared_copy():
    """deploy/compose-spec.json is an unmodified copy of the project's shared compose-spec.json."""
    if not UPSTREAM_SCHEMA.exists():
        pytest.skip(f"{UPSTREAM_SCHEMA} is not present on this machine")
    assert VENDORED_SCHEMA.read_bytes() == UPSTREAM_SCHEMA.read_bytes()


def test_vendored_schema_provenance_is_recorded():
    """deploy/README.md names the upstream repository, file and commit of the vendored schema."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "compose-spec/compose-spec" in readme
    assert "schema/compose-spec.json" in readme
    assert "170098ba07d9f53c383a41bfd4c5166b0a4529a6" in readme


def test_app_services_share_database_and_broker_urls(services):
    """Every app service gets the same INFERQ_DATABASE_URL and INFERQ_REDIS_URL."""
    envs = [env_of(services[name]) for name in APP_SERVICES]
    assert len({(env["INFERQ_DATABASE_URL"], env["INFERQ_REDIS_URL"]) for env in envs}) == 1


def test_database_url_points_at_the_postgres_service(services):
    """INFERQ_DATABASE_URL uses psycopg and the postgres service's host, port, user and database."""
    url = urlsplit(env_of(services["api"])["INFERQ_DATABASE_URL"])
    postgres_env = env_of(services["postgres"])
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port or 5432) == ("postgres", 5432)
    assert url.username == postgres_env["POSTGRES_USER"]
    assert url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == postgres_env["POSTGRES_DB"]


def test_redis_url_points_at_the_redis_service(services):
    """INFERQ_REDIS_URL is a redis:// URL on the redis service's default port."""
    url = urlsplit(env_of(services["api"])["INFERQ_REDIS_URL"])
    assert url.scheme == "redis"
    assert (url.hostname, url.port or 6379) == ("redis", 6379)


def test_app_services_share_the_data_volume(services):
    """Every app service mounts the inferq-data volume at INFERQ_DATA_DIR=/data."""
    for name in APP_SERVICES:
        assert env_of(services[name])["INFERQ_DATA_DIR"] == "/data", name
        assert "inferq-data:/data" in services[name]["volumes"], name


def test_visibility_timeout_outlasts_the_task_time_limit(services):
    """Redis redelivers no running task: the visibility timeout is longer than the hard task time limit."""
    for name in APP_SERVICES:
        env = env_of(services[name])
        if "INFERQ_VISIBILITY_TIMEOUT" in env and "INFERQ_TASK_TIME_LIMIT" in env:
            assert int(env["INFERQ_VISIBILITY_TIMEOUT"]) > int(env["INFERQ_TASK_TIME_LIMIT"]), name


@pytest.mark.parametrize("name", STACK_SERVICES)
def test_api_and_workers_wait_for_a_healthy_stack(services, name):
    """api and workers start after postgres and redis are healthy and migrations have completed."""
    depends_on = services[name]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_runs_once_after_postgres_is_healthy(services):
    """migrate is a one-shot service that runs `inferq migrate` once postgres is healthy."""
    migrate = services["migrate"]
    assert argv_of(migrate["command"]) == ["inferq", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"


def test_flower_waits_for_a_healthy_redis(services):
    """flower starts once redis is healthy."""
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_long_running_services_restart_unless_stopped(services):
    """Every service except the one-shot migrate restarts unless stopped."""
    for name, service in services.items():
        if name != "migrate":
            assert service.get("restart") == "unless-stopped", name


def test_postgres_and_redis_have_healthchecks(services):
    """postgres is checked with pg_isready and redis with redis-cli ping."""
    pg_test = argv_of(services["postgres"]["healthcheck"]["test"])
    assert pg_test == ["CMD", "pg_isready", "-U", "inferq", "-d", "inferq"]
    assert argv_of(services["redis"]["healthcheck"]["test"]) == ["CMD", "redis-cli", "ping"]


def test_api_healthcheck_probes_readyz(services):
    """The api healthcheck requests /readyz on port 8000 with python (the slim image has no curl)."""
    test = argv_of(services["api"]["healthcheck"]["test"])
    assert test[:2] == ["CMD", "python"]
    assert "http://127.0.0.1:8000/readyz" in " ".join(test)


def test_redis_persists_and_never_evicts(services):
    """redis runs with an append-only file and the noeviction memory policy, on a named volume."""
    argv = argv_of(services["redis"]["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_gpu_worker_reserves_nvidia_gpu_zero(services):
    """worker-gpu0 reserves NVIDIA device 0 with the gpu capability."""
    devices = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["device_ids"] == ["0"]
    assert "gpu" in devices[0]["capabilities"]


def test_gpu_worker_is_pinned_to_gpu_zero(services):
    """worker-gpu0 passes --gpu 0 and INFERQ_GPU=0 and serves the inference lanes (interactive, bulk, ops)."""
    worker = services["worker-gpu0"]
    argv = argv_of(worker["command"])
    assert argv[:2] == ["inferq", "worker"]
    assert argv[argv.index("--gpu") + 1] == "0"
    assert env_of(worker)["INFERQ_GPU"] == "0"
    assert argv[argv.index("--lanes") + 1] == "interactive,bulk,ops"


def test_gpu_worker_image_has_cuda_tensorflow(services):
    """worker-gpu0 runs an image built with CUDA-enabled TensorFlow, under its own tag."""
    worker = services["worker-gpu0"]
    assert worker["build"]["args"]["TENSORFLOW_VARIANT"] == "gpu"
    assert worker["image"] != services["api"]["image"]


def test_cpu_worker_uses_no_gpu_and_consumes_training(services):
    """worker-cpu reserves no device, has an empty INFERQ_GPU, and serves every lane, training included."""
    worker = services["worker-cpu"]
    argv = argv_of(worker["command"])
    assert "deploy" not in worker
    assert "--gpu" not in argv
    assert env_of(worker)["INFERQ_GPU"] == ""
    assert "--lanes" not in argv and "--queues" not in argv  # INFERQ_WORKER_LANES' default: every lane


def test_published_ports(services):
    """The API publishes 8000 and Flower 5555; postgres and redis publish nothing."""
    assert "8000:8000" in services["api"]["ports"]
    assert any(str(port).endswith("5555:5555") for port in services["flower"]["ports"])
    assert "ports" not in services["postgres"]
    assert "ports" not in services["redis"]


def test_named_volumes_are_declared(compose, services):
    """Every named volume a service mounts is declared in the top-level volumes section."""
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":", 1)[0]
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"


def test_service_commands_start_with_a_known_executable(services):
    """Every service command starts with inferq, gunicorn or redis-server, or uses the image default."""
    for name, service in services.items():
        argv = argv_of(service.get("command"))
        assert not argv or argv[0] in KNOWN_EXECUTABLES, f"{name}: {argv}"


def test_dockerfile_default_command_is_the_api(services):
    """The image's CMD is the same gunicorn command the api service runs, and there is no ENTRYPOINT."""
    instructions = dockerfile_instructions()
    cmds = [exec_form(args) for op, args in instructions if op == "CMD"]
    assert not [args for op, args in instructions if op == "ENTRYPOINT"]
    assert cmds and cmds[-1][0] in KNOWN_EXECUTABLES
    assert cmds[-1] == argv_of(services["api"]["command"])


def test_dockerfile_runs_as_non_root_on_python_311_slim():
    """The image builds FROM python:3.11-slim and its last USER is not root."""
    instructions = dockerfile_instructions()
    assert [args for op, args in instructions if op == "FROM"] == ["python:3.11-slim"]
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_copies_everything_pip_install_needs():
    """The Dockerfile copies pyproject.toml, its readme, alembic.ini and every package pyproject installs."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set(copied_sources())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", pyproject["project"]["readme"], "alembic.ini"} | packages <= copied


def test_dockerignore_keeps_local_state_and_tests_out_of_the_image():
    """.dockerignore excludes venv, var, .git, caches, tests and bench, but nothing the Dockerfile copies."""
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    patterns = {line for line in lines if line and not line.startswith("#")}
    assert {".venv", "var", ".git", "tests", "bench", "**/__pycache__", ".env"} <= patterns
    for source in copied_sources():
        top = source.split("/")[0]
        assert not any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), top) for p in patterns), source
