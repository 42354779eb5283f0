"""Typed configuration: one Settings object, built at each entry point and passed down (env prefix INFERQ_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED = "embedded"


class Settings(BaseSettings):
    """Every knob of inferq, with defaults that need no setup (SQLite, embedded Redis, files under ./var)."""

    model_config = SettingsConfigDict(env_prefix="INFERQ_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Local files: SQLite database, blobs, models, logs.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in WAL mode under data_dir.")
    redis_url: str = Field(EMBEDDED, description="Broker URL, or 'embedded' for the bundled redis-server.")
    embedded_redis_port: int = Field(6399, description="TCP port of the embedded redis-server.")

    # --- HTTP ---------------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str = Field("", description="Base URL clients use; empty means http://api_host:api_port.")
    flower_port: int = 5555

    # --- input limits (every limit is a named setting) ----------------------------------------------------
    max_images_per_job: int = Field(64, ge=1, description="Images one classify job may carry.")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Bytes of one encoded image.")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes of one request body.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decoded pixels (width*height) of one image.")
    max_top_k: int = Field(10, ge=1, description="Largest top_k a job may ask for.")
    default_top_k: int = Field(3, ge=1)
    page_size_max: int = Field(500, ge=1, description="Largest page of results or jobs.")
    max_wait_s: float = Field(60.0, ge=0, description="Longest long poll (GET /v1/jobs/{id}?wait=).")
    wait_poll_interval_s: float = Field(0.02, gt=0, description="How often a long poll re-reads the job.")
    api_threads: int = Field(32, ge=1, description="Threads per API process (long polls hold one each).")

    # --- batching ------------------------------------------------------------------------------------------
    max_batch: int = Field(64, ge=1, description="Largest forward pass of the micro-batcher (images).")
    max_batch_wait_ms: float = Field(10.0, ge=0, description="Longest a first image waits for company.")
    worker_concurrency: int = Field(32, ge=1, description="Task threads per inference worker process.")

    # --- reliability ----------------------------------------------------------------------------------------
    task_soft_time_limit: int = Field(300, ge=1, description="Seconds before a task is asked to stop.")
    task_time_limit: int = Field(360, ge=1, description="Seconds before a task is killed.")
    visibility_timeout: int = Field(3600, ge=1, description="Seconds before Redis redelivers an unacked task.")
    queued_lease_s: float = Field(60.0, gt=0, description="A queued job older than this is re-dispatched.")
    reconcile_interval_s: float = Field(30.0, gt=0, description="How often the reconciler runs.")
    max_attempts: int = Field(3, ge=1, description="Deliveries of one job before its items fail.")
    running_lease_s: float = Field(
        900.0, gt=0, description="A running job untouched this long (> INFERQ_TASK_TIME_LIMIT) is re-dispatched."
    )
    # TEST-ONLY hook (never set in production): a worker os._exit(9)s on a job of the model FAULT_POISON_MODEL.
    fault_injection: bool = Field(False, description="Test only: let the poison model crash the worker process.")

    # --- models -------------------------------------------------------------------------------------------
    default_model: str = Field("mnist-cnn", description="Model used when a job names none.")
    default_alias: str = Field("production", description="Alias a bare model name resolves to.")
    model_cache_size: int = Field(4, ge=1, description="Loaded models kept per worker process.")
    gpu: str = Field("", description="GPU index for this worker ('' = CPU, or as CUDA_VISIBLE_DEVICES).")
    train_epochs: int = Field(12, ge=1, description="Epochs for the default model at first start.")
    mnist_cache: Path | None = Field(None, description="Path of mnist.npz if keras cannot download it.")

    # --- models and training ------------------------------------------------------------------------------
    train_max_epochs: int = Field(100, ge=1, description="Most epochs one training job may ask for.")
    train_max_batch_size: int = Field(1024, ge=1, description="Largest batch size one training job may ask for.")
    train_cancel_check_batches: int = Field(1, ge=1, description="Training batches between two cancel checks.")
    calibration_images: int = Field(500, ge=1, description="Training images used to calibrate int8 quantization.")
    benchmark_repeats: int = Field(30, ge=1, description="Timed calls per batch size when benchmarking a version.")
    model_upload_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes of one uploaded model file.")
    train_time_limit: int = Field(
        3000, ge=1, description="Seconds a training-queue task may run (capped below INFERQ_VISIBILITY_TIMEOUT)."
    )

    # --- datasets and scoring ------------------------------------------------------------------------------
    chunk_size: int = Field(512, ge=1, description="Dataset items per scoring task (one Celery message).")
    score_batch: int = Field(256, ge=1, description="Images per forward pass when scoring a dataset.")
    score_parallel_chunks: int = Field(
        1, ge=1, description="Chunks a worker process scores at once (1 suits a model that fills every core)."
    )
    dataset_max_upload_bytes: int = Field(1024**3, ge=1024, description="Bytes of one uploaded dataset file.")
    dataset_max_items: int = Field(1_000_000, ge=1, description="Items (images) one dataset may hold.")
    dataset_max_expanded_bytes: int = Field(4 * 1024**3, ge=1024, description="Bytes a dataset may expand to.")
    dataset_max_compression_ratio: float = Field(
        200.0, gt=1, description="Largest expanded/compressed ratio of an archive entry or archive (zip bombs)."
    )

    # --- webhooks -------------------------------------------------------------------------------------------
    webhook_timeout_s: float = Field(10.0, gt=0, description="Seconds one webhook delivery attempt may take in all.")
    webhook_max_attempts: int = Field(14, ge=1, description="Attempts of one delivery before it is given up (~3 days).")
    webhook_retry_base_s: float = Field(10.0, gt=0, description="Delay before the first retry; each next one is x3.")
    webhook_retry_max_delay_s: float = Field(12 * 3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_retry_scale: float = Field(1.0, gt=0, description="Multiplies every retry delay (tests use 0.001).")
    webhook_dispatch_interval_s: float = Field(2.0, gt=0, description="How often the dispatcher sends due deliveries.")
    webhook_dispatch_batch: int = Field(100, ge=1, description="Deliveries one dispatcher run claims at most.")
    webhook_dispatch_concurrency: int = Field(8, ge=1, description="Deliveries one dispatcher run sends at once.")
    webhook_secret_overlap_s: float = Field(24 * 3600.0, ge=0, description="After a rotation the old secret signs too.")
    webhook_progress_interval_s: float = Field(1.0, ge=0, description="Least seconds between progress events.")
    webhook_response_excerpt_bytes: int = Field(512, ge=0, description="Bytes of a receiver's answer kept per attempt.")
    webhook_max_url_length: int = Field(2048, ge=16, description="Longest webhook URL accepted.")
    webhook_allow_cidrs: str = Field("", description="Comma-separated CIDRs webhooks may reach although private.")

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"INFERQ_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must be longer than "
                f"INFERQ_TASK_TIME_LIMIT ({self.task_time_limit}s), or Redis redelivers running tasks"
            )
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("INFERQ_TASK_SOFT_TIME_LIMIT must be shorter than INFERQ_TASK_TIME_LIMIT")
        if self.running_lease_s <= self.task_time_limit:
            raise ValueError(
                f"INFERQ_RUNNING_LEASE_S ({self.running_lease_s}s) must be longer than "
                f"INFERQ_TASK_TIME_LIMIT ({self.task_time_limit}s), or live jobs are re-dispatched"
            )
        if self.default_top_k > self.max_top_k:
            raise ValueError("INFERQ_DEFAULT_TOP_K must not exceed INFERQ_MAX_TOP_K")
        return self

    # --- derived values -------------------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        """The database URL, with the SQLite default placed under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'inferq.db').resolve()}"

    @property
    def resolved_api_url(self) -> str:
        """The URL clients use to reach the API."""
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def uses_embedded_redis(self) -> bool:
        return self.redis_url == EMBEDDED

    def broker_url(self) -> str:
        """The Redis URL to connect to; the embedded server listens on loopback at embedded_redis_port."""
        if self.uses_embedded_redis:
            return f"redis://127.0.0.1:{self.embedded_redis_port}/0"
        return self.redis_url
