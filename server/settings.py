"""All configuration, read once from the environment (prefix ``PHASEBOARD_``).

Nothing else in the code base reads environment variables: pass a ``Settings`` around.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _local_blob_dir(url: str) -> Path | None:
    """The directory a local ``blob_url`` (a path or ``file:///path``) names, else None."""
    url = url.strip()
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    if url and "://" not in url:
        return Path(url)
    return None


class Settings(BaseSettings):
    """Phaseboard settings; every field can be set as ``PHASEBOARD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PHASEBOARD_", extra="ignore")

    home: Path = Field(default=Path("~/.phaseboard"), description="Root for the embedded default.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite in home.")
    storage_dir: Path | None = Field(
        default=None,
        description="Blob directory (default home/blobs): the blob store itself unless "
        "blob_url names another; with s3:// it holds upload staging and the read cache.",
    )
    blob_url: str = Field(
        default="",
        description="Where blobs live: a path or file:///path (the local directory store), or "
        "s3://bucket/prefix (credentials, region and AWS_ENDPOINT_URL from the usual AWS "
        "variables). Unset: storage_dir.",
    )
    blob_cache_mb: int = Field(
        default=4096,
        ge=0,
        description="Local copies of remote blobs kept for readers that need a file "
        "(workers loading checkpoints), least recently used evicted past this size.",
    )
    api_token: str | None = Field(
        default=None, description="If set, writes need this bearer token."
    )
    max_upload_mb: int = Field(default=2048, description="Largest accepted checkpoint upload.")
    max_tokenizer_mb: int = Field(
        default=32, ge=1, description="Largest accepted tokenizer.json (a run's tokenizer)."
    )
    # Bounds on inspecting one uploaded checkpoint (analysis.checkpoints.LoadLimits); past
    # any of them the upload is refused with 422.
    checkpoint_max_objects: int = Field(
        default=1_000_000, ge=1, description="Dict entries looked at while finding the weights."
    )
    checkpoint_max_depth: int = Field(default=64, ge=1, description="Deepest dict nesting.")
    checkpoint_max_inflated_mb: int = Field(
        default=256, ge=0, description="Decompressed size of compressed archive members."
    )
    checkpoint_max_inspect_s: float = Field(
        default=30.0, gt=0, description="Wall time of walking one unpickled checkpoint."
    )
    checkpoint_max_tensors: int = Field(
        default=100_000, ge=1, description="Tensors in one checkpoint or dataset file."
    )
    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = Field(default=None, description="Base URL used in share links.")
    # What a request may name or reach (docs/limits-and-security.md).
    model_factories: str = Field(
        default="",
        description="Comma list of 'package.module:function' names or patterns (my_pkg.*:make_*) "
        "a torch_module task config may name, besides entry points of group phaseboard.models.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma list of extra Host names this server answers (besides loopback names "
        "and the host of public_url / host); others get 400. '*' turns the check off.",
    )
    private: bool = Field(
        default=False, description="Reads need the API token too (API and pages; needs api_token)."
    )
    upload_idle_s: float = Field(
        default=60.0, gt=0, description="An upload that sends nothing for this long is cut (408)."
    )
    upload_max_s: float = Field(
        default=3600.0, gt=0, description="Longest time one upload may take in all (408)."
    )

    queue: Literal["local", "celery", "none"] = Field(
        default="local", description="local: in-process worker pool; celery: Redis broker."
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    local_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Workers of the local pool (default: one per CPU core).",
    )
    local_pool: Literal["threads", "processes"] = Field(
        default="threads",
        description="How the local pool runs its general workers: threads of the server, or "
        "one child process each (a worker that dies, say to the OOM killer, is replaced and its "
        "jobs queued again, and the server lives on). Threads are the default: on the demo's "
        "restricted LLCs processes were no faster (bench/RESULTS.md) and each imports torch "
        "again. The fast lane is always a thread.",
    )
    local_fast_workers: int = Field(
        default=1,
        description="Extra local threads that take only cheap jobs (metrics, phases), so "
        "these never wait behind LLC batches.",
    )
    torch_threads: int = Field(
        default=1,
        description="torch intra-op threads per local worker thread; 1 with one worker per "
        "core measured faster than fewer workers with more threads (bench/RESULTS.md).",
    )
    worker_heap_pad_mb: int = Field(
        default=64,
        description="Workers keep freed tensors up to 32 MB on glibc's heap, returning free "
        "memory beyond this much per arena to the OS (server.jobs.allocator); 0 leaves "
        "malloc's defaults, which page-fault a batch's tensors in again at every SGLD step.",
    )
    llc_batch_checkpoints: int = Field(
        default=16,
        description="Queued LLC / restricted-LLC jobs of one run and config claimed together "
        "and run as one vectorised batch (1: one job at a time); idle local workers split "
        "them fairly. 16 finished the demo's analyses sooner than 8 (bench/RESULTS.md).",
    )
    llc_memory_mb: int | None = Field(
        default=None,
        description="Memory budget of one vectorised LLC batch; checkpoints are chunked to "
        "fit. Default: 512 MB on CPU (cache-bound past that), a third of the free memory on a GPU.",
    )
    worker_devices: str = Field(default="cpu", description="Comma list of devices for local pool.")
    heartbeat_s: float = Field(default=5.0, description="Seconds between worker heartbeats.")
    stale_after_s: float = Field(
        default=60.0, description="Heartbeat age after which a job is requeued."
    )
    max_job_s: float = Field(
        default=6 * 3600, description="Longest job; sets Celery's visibility timeout."
    )
    max_attempts: int = 3
    # Bounds on what one request may ask of the server; 413/422 past them.
    max_metric_points: int = Field(
        default=100_000, description="Most metric points in one POST (the client sends 5000)."
    )
    max_json_mb: float = Field(default=16.0, description="Largest JSON/form request body.")
    max_llc_chains: int = Field(default=256, description="Most SGLD chains of one LLC job.")
    max_llc_draws: int = Field(default=100_000, description="Most draws per chain.")
    max_llc_batch_size: int = Field(default=65_536, description="Largest SGLD minibatch.")
    max_llc_chain_steps: int = Field(
        default=10_000_000,
        description="Most chains x (burn-in + draws x steps between draws) of one LLC job.",
    )
    run_crashed_after_s: float = Field(
        default=120.0,
        description="A running run whose client heartbeat is older than this reads as crashed.",
    )
    auto_analyses: str | None = Field(
        default=None,
        description="Lenses queued for each new checkpoint of a run with a task, as a comma "
        "list (run-level lenses such as essential_dynamics rerun over all checkpoints); a "
        "run's own analysis_config.analyses wins. Unset: the lenses the lens registry marks "
        "automatic (metrics, llc, llc_restricted, essential_dynamics, learning_order); "
        "empty: none.",
    )
    auto_calibrate: bool = Field(
        default=True,
        description="Calibrate the LLC settings of a run that has none of its own (no lr or "
        "localization in analysis_config.llc) before its LLC jobs run: they wait, a "
        "calibration runs on checkpoints spread over the trajectory once the run settles, "
        "and its recommendation becomes the run's settings. false: such runs use the defaults.",
    )
    calibration_settle_s: float = Field(
        default=120.0,
        description="A run that never says it finished (no client finish, an upload by "
        "hand) counts as settled, and is calibrated, this many seconds after its last "
        "checkpoint arrived while no client heartbeat says it is running.",
    )

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        """``PHASEBOARD_STORAGE_DIR=`` means the default, not the current directory."""
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = Path(self.home).expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'phaseboard.db'}"
        local_blobs = _local_blob_dir(self.blob_url)
        if local_blobs is not None:  # a local blob URL names the blob directory
            self.storage_dir = local_blobs
        if self.storage_dir is None:
            self.storage_dir = self.home / "blobs"
        self.storage_dir = Path(self.storage_dir).expanduser()
        if self.api_token == "":
            self.api_token = None
        if self.private and not self.api_token:
            raise ValueError("PHASEBOARD_PRIVATE=true needs PHASEBOARD_API_TOKEN (the read token)")
        return self

    @property
    def model_factory_patterns(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.model_factories.split(",") if p.strip())

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_tokenizer_bytes(self) -> int:
        return self.max_tokenizer_mb * 1024 * 1024

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def ensure_dirs(self) -> None:
        """Create the home and blob directories (the embedded default needs both)."""
        self.home.mkdir(parents=True, exist_ok=True)
        assert self.storage_dir is not None
        self.storage_dir.mkdir(parents=True, exist_ok=True)
