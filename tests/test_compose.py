"""docker-compose.yml agrees with server/settings.py (no Docker engine runs here)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from phaseboard.server.settings import REPO_ROOT, Settings

SERVICES = {"postgres", "redis", "api", "worker", "worker-fast", "minio", "minio-init"}
S3_PROFILE = {"minio", "minio-init"}  # the object store option: `--profile s3`


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _mounts(service: dict) -> dict[str, str]:
    """``{source: target}`` of a service's volumes (short syntax)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[source] = target
    return out


def test_compose_has_the_five_services_and_the_object_store_option(compose: dict) -> None:
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        assert (service.get("profiles") == ["s3"]) == (name in S3_PROFILE), name
        # A default service may not wait for an optional one (compose refuses to start).
        if name not in S3_PROFILE:
            assert not S3_PROFILE & set(service.get("depends_on", {})), name


def test_s3_profile_gives_every_phaseboard_service_the_bucket_minio_init_creates(
    compose: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from phaseboard.server.store.blobs import open_blob_store
    from phaseboard.server.store.blobs.s3 import S3BlobStore

    header = (REPO_ROOT / "docker-compose.yml").read_text().split("services:")[0]
    url = next(w for w in header.split() if w.startswith("PHASEBOARD_BLOB_URL="))
    blob_url = url.split("=", 1)[1]
    endpoint = next(w for w in header.split() if w.startswith("AWS_ENDPOINT_URL="))
    assert endpoint.split("=", 1)[1] == "http://minio:9000"
    init = " ".join(compose["services"]["minio-init"]["entrypoint"])
    assert "http://minio:9000" in init and f"local/{blob_url.split('/')[2]}" in init
    for name in ("api", "worker", "worker-fast"):
        env = compose["services"][name]["environment"]
        assert env["PHASEBOARD_BLOB_URL"] == "${PHASEBOARD_BLOB_URL:-}", name
        for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert key in env, f"{name}: {key}"
    minio = compose["services"]["minio"]["environment"]
    api = compose["services"]["api"]["environment"]
    assert minio["MINIO_ROOT_USER"] == "${AWS_ACCESS_KEY_ID:-phaseboard}"
    assert api["AWS_ACCESS_KEY_ID"] == "${AWS_ACCESS_KEY_ID:-phaseboard}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    store = open_blob_store(Settings(blob_url=blob_url, storage_dir=tmp_path))
    assert isinstance(store, S3BlobStore) and store.bucket == "phaseboard"


def test_every_phaseboard_variable_is_a_settings_field(compose: dict) -> None:
    fields = set(Settings.model_fields)
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("PHASEBOARD_"):
                field = key.removeprefix("PHASEBOARD_").lower()
                assert field in fields, f"{name}: {key} is not a field of Settings"


def test_environment_parses_into_settings_for_api_and_worker(compose: dict) -> None:
    for name in ("api", "worker", "worker-fast"):
        env = {
            k.removeprefix("PHASEBOARD_").lower(): v
            for k, v in compose["services"][name]["environment"].items()
            if k.startswith("PHASEBOARD_") and not str(v).startswith("${")
        }
        settings = Settings(**env)
        assert settings.queue == "celery"
        assert settings.database_url.startswith("postgresql://")
        assert "@postgres:" in settings.database_url
        assert settings.redis_url.startswith("redis://redis:")


def test_api_migrates_then_serves_on_all_interfaces(compose: dict) -> None:
    cmd = _command(compose["services"]["api"])
    assert cmd.index("phaseboard migrate") < cmd.index("phaseboard up")
    assert "--host 0.0.0.0" in cmd
    assert compose["services"]["api"]["environment"]["PHASEBOARD_QUEUE"] == "celery"


def test_worker_runs_celery_on_the_gpu_and_can_scale(compose: dict) -> None:
    worker = compose["services"]["worker"]
    args = shlex.split(_command(worker))
    assert args[:2] == ["phaseboard", "worker"]
    assert args[args.index("--device") + 1] == "cuda:0"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # `--scale worker=N` needs no fixed name and no host port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_named_volumes_are_declared_and_blobs_shared_at_storage_dir(compose: dict) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for source in _mounts(service):
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
    assert "/var/lib/postgresql/data" in _mounts(compose["services"]["postgres"]).values()
    targets = set()
    for name in ("api", "worker"):
        service = compose["services"][name]
        storage_dir = Path(service["environment"]["PHASEBOARD_STORAGE_DIR"])
        assert Path(_mounts(service)["blobs"]) == storage_dir, name
        targets.add(storage_dir)
    assert len(targets) == 1, "api and worker must see the blob store at the same path"


def test_every_service_has_a_healthcheck_and_waits_for_its_dependencies(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        if service.get("restart") == "no":  # a one-shot set-up job (minio-init)
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/api/health" in " ".join(services["api"]["healthcheck"]["test"])
    for name, needs in {"api": {"postgres", "redis"}, "worker": {"api", "redis"}}.items():
        depends = services[name]["depends_on"]
        assert needs <= set(depends), name
        for dep in needs:
            assert depends[dep]["condition"] == "service_healthy"


def test_dockerfile_installs_torch_before_the_package() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert text.index("pip install ${TORCH_SPEC}") < text.index("pip install . ")
    for path in ("server", "analysis", "migrations", "frontend", "pyproject.toml", "setup.py"):
        assert path in text


def test_fast_lane_worker_takes_only_cheap_jobs_on_the_cpu(compose: dict) -> None:
    from phaseboard.server.jobs.celery_app import FAST_QUEUE, worker_queues

    fast = compose["services"]["worker-fast"]
    args = shlex.split(_command(fast))
    assert args[:2] == ["phaseboard", "worker"]
    device, lane = args[args.index("--device") + 1], args[args.index("--lane") + 1]
    assert (device, lane) == ("cpu", "fast")
    assert worker_queues(device, lane) == [FAST_QUEUE]
    assert "deploy" not in fast  # no GPU reserved for forward-only jobs
    assert _mounts(fast) == _mounts(compose["services"]["worker"])  # same blob store
