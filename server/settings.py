"""All configuration, read once from the environment (prefix ``PHASEBOARD_``).

Nothing else in the code base reads environment variables: pass a ``Settings`` around.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Phaseboard settings; every field can be set as ``PHASEBOARD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PHASEBOARD_", extra="ignore")

    home: Path = Field(default=Path("~/.phaseboard"), description="Root for the embedded default.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite in home.")
    storage_dir: Path | None = Field(
        default=None, description="Blob store root; default home/blobs."
    )
    api_token: str | None = Field(
        default=None, description="If set, writes need this bearer token."
    )
    max_upload_mb: int = Field(default=2048, description="Largest accepted checkpoint upload.")
    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = Field(default=None, description="Base URL used in share links.")

    queue: Literal["local", "celery", "none"] = Field(
        default="local", description="local: in-process worker pool; celery: Redis broker."
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    local_workers: int = Field(default=1, description="Threads of the in-process worker pool.")
    worker_devices: str = Field(default="cpu", description="Comma list of devices for local pool.")
    heartbeat_s: float = Field(default=5.0, description="Seconds between worker heartbeats.")
    stale_after_s: float = Field(
        default=60.0, description="Heartbeat age after which a job is requeued."
    )
    max_job_s: float = Field(
        default=6 * 3600, description="Longest job; sets Celery's visibility timeout."
    )
    max_attempts: int = 3
    auto_analyses: str = Field(
        default="metrics,llc,essential_dynamics,learning_order",
        description="Analyses queued for each new checkpoint of a known task "
        "(run-level lenses such as essential_dynamics rerun over all checkpoints).",
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
        if self.storage_dir is None:
            self.storage_dir = self.home / "blobs"
        self.storage_dir = Path(self.storage_dir).expanduser()
        if self.api_token == "":
            self.api_token = None
        return self

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def ensure_dirs(self) -> None:
        """Create the home and blob directories (the embedded default needs both)."""
        self.home.mkdir(parents=True, exist_ok=True)
        assert self.storage_dir is not None
        self.storage_dir.mkdir(parents=True, exist_ok=True)
