"""All configuration in one place, read from DISTILLERY_* environment variables (or a .env file)."""

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict


class TeacherConfig(BaseModel):
    """One named OpenAI-compatible teacher endpoint (a vLLM server)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    base_url: HttpUrl
    model: str = Field(description="The served model name the endpoint answers to.")
    max_inflight: int = Field(default=4, ge=1, le=256, description="Requests kept in flight at once.")
    batch_size: int = Field(default=64, ge=1, le=1024, description="Prompts per completions request.")
    request_timeout_s: float = Field(default=600.0, gt=0)


class Settings(BaseSettings):
    """Service settings; nested values (teachers) are given as JSON."""

    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""
    teachers: list[TeacherConfig] = Field(
        default_factory=lambda: [TeacherConfig(name="tiny", base_url=HttpUrl("http://127.0.0.1:8100"), model="tiny")]
    )
    database_application_name: str = Field(default="distillery", max_length=63)
    host: str = "127.0.0.1"
    port: int = 8000

    embedded_worker: bool = True
    worker_lease_s: float = Field(default=120.0, gt=0)
    worker_poll_s: float = Field(default=0.5, gt=0)
    worker_max_attempts: int = Field(default=5, ge=1)
    teacher_probe_interval_s: float = Field(default=15.0, gt=0)
    teacher_outage_window_s: float = Field(
        default=900.0, ge=0, description="While a teacher is down this long, its items keep their attempts."
    )
    worker_shutdown_grace_s: float = Field(default=30.0, ge=0)
    worker_db_retry_s: float = Field(default=300.0, ge=0, description="How long a worker retries a unit of work.")

    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(default=4 << 30, ge=1024, description="Largest JSONL upload body.")
    max_prompts_per_job: int = Field(default=1_000_000, ge=1)
    max_prompt_chars: int = Field(default=200_000, ge=1, description="Per prompt: its text, or all message contents.")
    max_messages_per_prompt: int = Field(default=256, ge=1)
    max_metadata_bytes: int = Field(default=16_384, ge=2, description="Per prompt, as compact JSON.")
    idempotency_pending_ttl_s: float = Field(default=600.0, gt=0, description="When a crashed request's key frees.")

    export_chunk_rows: int = Field(default=512, ge=1)
    max_page_size: int = Field(default=1000, ge=1)

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'distillery.db').resolve()}"

    def teacher(self, name: str) -> TeacherConfig | None:
        return next((t for t in self.teachers if t.name == name), None)

    # --- datasets ---
    datasets_dir: Path | None = Field(default=None, description="Shards and manifests; default <data_dir>/datasets.")
    dataset_chunk_rows: int = Field(default=512, ge=1, description="Rows read per query and per Parquet row group.")
    dataset_shard_bytes: int = Field(default=256 << 20, ge=1 << 16, description="Default target shard size.")

    @property
    def resolved_datasets_dir(self) -> Path:
        """The configured datasets directory, or `datasets` in the data directory."""
        return self.datasets_dir if self.datasets_dir is not None else self.data_dir / "datasets"


@lru_cache
def get_settings() -> Settings:
    return Settings()
