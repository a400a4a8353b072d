"""All configuration in one place, read from DISTILLERY_* environment variables (or a .env file)."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _base_urls(urls: list[HttpUrl]) -> list[str]:
    """Replica URLs as the clients use them: without the trailing slash pydantic adds."""
    return [str(url).rstrip("/") for url in urls]


class TeacherConfig(BaseModel):
    """One named teacher: a model served by one or more OpenAI-compatible (vLLM) replicas.

    `base_url` is the single-replica form of `replicas`. Dispatch adapts the number of requests in flight to
    each replica's load; `max_inflight`, `batch_size` and `batch_token_budget` are upper bounds."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    replicas: list[HttpUrl] = Field(min_length=1, max_length=256, description="Base URLs serving the same model.")
    model: str = Field(description="The served model name the replicas answer to.")
    api_key: SecretStr | None = Field(default=None, description="Sent as `Authorization: Bearer`; never shown.")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra request headers; never shown.")
    max_inflight: int = Field(default=64, ge=1, le=1024, description="At most this many requests per replica.")
    batch_size: int = Field(default=64, ge=1, le=1024, description="At most this many prompts per request.")
    batch_token_budget: int = Field(
        default=64 * 256 * 21,
        ge=1,
        description="At most prompts x n x max_tokens x (k+1) per request, so long generations get small batches.",
    )
    request_timeout_s: float = Field(default=600.0, gt=0)
    read_server_metrics: bool = Field(
        default=True, description="Steer in-flight by the replica's /metrics (vLLM's running and waiting counts)."
    )
    reasoning_end_token: str | None = Field(
        default="</think>",
        max_length=64,
        description="The marker ending a reasoning teacher's thinking; each result records where the answer "
        "starts after it, when the teacher's tokenizer has it as one token. None: never look for one.",
    )

    @model_validator(mode="before")
    @classmethod
    def _base_url_is_one_replica(cls, data: Any) -> Any:
        if isinstance(data, dict) and "base_url" in data:
            data = dict(data)
            if "replicas" in data:
                raise ValueError("give either 'base_url' or 'replicas', not both")
            data["replicas"] = [data.pop("base_url")]
        return data

    @field_validator("replicas")
    @classmethod
    def _distinct_replicas(cls, value: list[HttpUrl]) -> list[HttpUrl]:
        urls = _base_urls(value)
        if len(set(urls)) != len(urls):
            raise ValueError("replica URLs must be distinct")
        return value

    @property
    def replica_urls(self) -> list[str]:
        return _base_urls(self.replicas)

    def request_headers(self) -> dict[str, str]:
        """The headers every request to this teacher carries (secrets in clear: for the HTTP client only)."""
        headers = {name: value.get_secret_value() for name, value in self.headers.items()}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return headers


class Settings(BaseSettings):
    """Service settings; nested values (teachers) are given as JSON."""

    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""
    teachers: list[TeacherConfig] = Field(
        default_factory=lambda: [TeacherConfig(name="tiny", replicas=[HttpUrl("http://127.0.0.1:8100")], model="tiny")]
    )
    database_application_name: str = Field(default="distillery", max_length=63)
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["json", "console"] | None = Field(
        default=None, description="JSON objects or console text, one a line (default: console on a tty, else JSON)."
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Bring the schema to head when a process starts; false where a separate step migrates "
        "(the process then refuses to start on an older schema).",
    )
    metrics_refresh_s: float = Field(
        default=5.0, gt=0, description="How often the API reads queue depth and job counts for its /metrics gauges."
    )

    embedded_worker: bool = True
    worker_lease_s: float = Field(default=120.0, gt=0)
    worker_poll_s: float = Field(
        default=0.1, gt=0, description="Idle workers look for new work this often (a read; Postgres also wakes them)."
    )
    project_max_inflight_items: int | None = Field(
        default=None, ge=1, description="Per project, at most this many items in flight across teachers (None: no cap)."
    )
    project_max_inflight_overrides: dict[str, int] = Field(
        default_factory=dict, description="Per-project caps by project name, over project_max_inflight_items."
    )
    worker_max_attempts: int = Field(default=5, ge=1)
    teacher_probe_interval_s: float = Field(default=15.0, gt=0)
    teacher_outage_window_s: float = Field(
        default=900.0, ge=0, description="While a teacher is down this long, its items keep their attempts."
    )
    worker_shutdown_grace_s: float = Field(default=30.0, ge=0)
    worker_db_retry_s: float = Field(default=300.0, ge=0, description="How long a worker retries a unit of work.")
    fidelity_sample_items: int = Field(
        default=16,
        ge=0,
        description="The first N items of every job also keep the teacher's logprobs exactly (float32), for the "
        "codec fidelity report (GET /v1/jobs/{id}/fidelity).",
    )

    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(default=4 << 30, ge=1024, description="Largest JSONL upload body.")
    max_prompts_per_job: int = Field(default=1_000_000, ge=1)
    max_prompt_chars: int = Field(default=200_000, ge=1, description="Per prompt: its text, or all message contents.")
    max_messages_per_prompt: int = Field(default=256, ge=1)
    max_metadata_bytes: int = Field(default=16_384, ge=2, description="Per prompt, as compact JSON.")
    idempotency_pending_ttl_s: float = Field(default=600.0, gt=0, description="When a crashed request's key frees.")
    idempotency_ttl_hours: float = Field(
        default=24.0, gt=0, description="Idempotency keys are forgotten this long after first use."
    )
    job_load_chunk_rows: int = Field(
        default=2000, ge=1, description="Items stored per committed transaction while a new job loads."
    )
    job_sweep_batch_rows: int = Field(
        default=5000, ge=1, description="Rows per transaction when a cancel, retry or delete sweeps a job's items."
    )
    job_sweep_interval_s: float = Field(
        default=1.0, gt=0, description="How often workers look for sweeps due (they are also woken at once)."
    )

    ui_session_secret: SecretStr | None = Field(
        default=None,
        description="Signs the web console's session cookies; when unset, a random one is kept in data_dir "
        "(every process of one service must share it).",
    )
    ui_session_hours: float = Field(default=12.0, gt=0, description="How long a console sign-in lasts.")
    export_chunk_rows: int = Field(default=512, ge=1, description="At most this many rows per export chunk.")
    max_page_size: int = Field(default=1000, ge=1)
    chunk_bytes: int = Field(
        default=8 << 20,
        ge=1,
        description="Each export chunk, dataset-build chunk and row group, and /records page stops before its rows "
        "pass this many bytes (decoded size estimated from stored sizes: 8 per token per top-k slot plus one, 4 per "
        "prompt token, and text, prompt, messages and metadata as stored); a row larger than this goes alone.",
    )

    @property
    def max_upload_line_bytes(self) -> int:
        """The longest JSONL line a valid record can take: prompt and response (or message contents) at 12
        bytes a character (a non-BMP character written as two \\u escapes), metadata at 6 bytes a byte (any
        byte written as one \\u escape), 256 bytes of keys and quotes per message, and 64 KiB for the rest."""
        text_bytes = 2 * self.max_prompt_chars * 12
        return text_bytes + 6 * self.max_metadata_bytes + 256 * self.max_messages_per_prompt + (64 << 10)

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'distillery.db').resolve()}"

    def teacher(self, name: str) -> TeacherConfig | None:
        return next((t for t in self.teachers if t.name == name), None)

    @field_validator("teachers")
    @classmethod
    def _unique_teacher_names(cls, value: list[TeacherConfig]) -> list[TeacherConfig]:
        names = [t.name for t in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(repeated)} (list replicas instead)")
        return value

    def project_inflight_cap(self, project: str) -> int | None:
        """The most items the project may have in flight at once, or None for no cap."""
        return self.project_max_inflight_overrides.get(project, self.project_max_inflight_items)

    # --- datasets ---
    datasets_dir: Path | None = Field(default=None, description="Shards and manifests; default <data_dir>/datasets.")
    dataset_chunk_rows: int = Field(
        default=512, ge=1, description="At most this many rows per query and per Parquet row group (see chunk_bytes)."
    )
    dataset_shard_bytes: int = Field(default=256 << 20, ge=1 << 16, description="Default target shard size.")

    @property
    def resolved_datasets_dir(self) -> Path:
        """The configured datasets directory, or `datasets` in the data directory."""
        return self.datasets_dir if self.datasets_dir is not None else self.data_dir / "datasets"

    # --- files (OpenAI-compatible /v1/files) ---
    files_dir: Path | None = Field(default=None, description="Uploaded files; default <data_dir>/files.")

    @property
    def resolved_files_dir(self) -> Path:
        """The configured files directory, or `files` in the data directory."""
        return self.files_dir if self.files_dir is not None else self.data_dir / "files"

    # --- upkeep ---
    # Finished jobs (completed, failed, cancelled) and datasets (ready or failed) older than this many days
    # are purged; None keeps them forever.
    retention_days: int | None = None
    maintenance_interval_s: float = Field(
        default=300.0, gt=0, description="How often expired data is purged and interrupted builds are failed."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
