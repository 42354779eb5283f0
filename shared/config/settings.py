"""Typed configuration: one Settings object, built at each entry point and passed down (env prefix INFERQ_)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED = "embedded"
_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$")


class Settings(BaseSettings):
    """Every knob of inferq, with defaults that need no setup (SQLite, embedded Redis, files under ./var)."""

    model_config = SettingsConfigDict(env_prefix="INFERQ_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Local files: SQLite database, blobs, models, logs.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in WAL mode under data_dir.")
    redis_url: str = Field(EMBEDDED, description="Broker URL, or 'embedded' for the bundled redis-server.")
    embedded_redis_port: int = Field(6399, description="TCP port of the embedded redis-server.")
    storage_url: str = Field(
        "", description="Blob storage (inputs, uploads, datasets): empty = files under data_dir; s3://bucket/prefix."
    )
    s3_endpoint_url: str = Field("", description="Endpoint of an S3-compatible server (MinIO, Ceph...); empty = AWS.")
    s3_region: str = Field("", description="Region of the bucket; empty = botocore's default (AWS_DEFAULT_REGION).")
    storage_retry_after_s: int = Field(
        5,
        ge=1,
        description="Retry-After of the 503 storage-unavailable answer the API gives when the blob store (S3, or the "
        "local disk) fails or cannot be reached; nothing of the request is kept.",
    )
    s3_access_key_id: str = Field("", description="S3 key id; empty = the standard AWS chain (AWS_ACCESS_KEY_ID...).")
    s3_secret_access_key: SecretStr = Field(SecretStr(""), description="S3 secret; empty = the standard AWS chain.")

    # --- HTTP ---------------------------------------------------------------------------------------------
    api_host: str = Field(
        "127.0.0.1", description="Address `inferq api` and `inferq flower` bind to (0.0.0.0: every interface)."
    )
    api_port: int = Field(8000, description="TCP port `inferq api` listens on.")
    api_url: str = Field("", description="Base URL clients use; empty means http://api_host:api_port.")
    flower_port: int = Field(5555, description="TCP port of Flower, the Celery worker console (`inferq flower`).")
    flower_basic_auth: SecretStr = Field(
        SecretStr(""),
        description="Flower's login as user:password (its HTTP API works only with one); empty means the one "
        "`inferq up` or `inferq flower` generated and saved in data_dir/flower-auth (mode 0600).",
    )

    # --- the web app (pages at /, signed in with an API key) ------------------------------------------------------
    web_enabled: bool = Field(True, description="Serve the web app's pages at / from the API process.")
    web_session_ttl_s: float = Field(
        8 * 3600.0, gt=0, description="Seconds a web session lives after its last use (kept in Redis)."
    )
    web_cookie_secure: bool = Field(
        False, description="Mark the session cookie Secure (set true behind HTTPS; requests over HTTPS get it anyway)."
    )

    # --- metrics (Prometheus) -----------------------------------------------------------------------------------
    metrics_enabled: bool = Field(True, description="Record Prometheus metrics and serve them (false: neither).")
    metrics_public: bool = Field(
        True,
        description="GET /metrics on the API needs no API key (keep the API on an internal network, or set false "
        "to require a key with the admin scope).",
    )
    metrics_host: str = Field("127.0.0.1", description="Bind address of each worker's metrics endpoint.")
    worker_metrics_port: int = Field(
        9808,
        ge=0,
        le=65535,
        description="Port of a worker process's /metrics (0 = none); `inferq up` gives the n-th worker port+n.",
    )

    # --- input limits (every limit is a named setting) ----------------------------------------------------
    max_images_per_job: int = Field(64, ge=1, description="Images one classify job may carry.")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Bytes of one encoded image.")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes of one request body.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decoded pixels (width*height) of one image.")
    max_top_k: int = Field(10, ge=1, description="Largest top_k a job may ask for.")
    max_deadline_s: float = Field(
        86400.0,
        gt=0,
        description="Largest deadline_s (or Inferq-Deadline-S header) a job may carry: a job not started within "
        "its deadline ends as expired without running.",
    )
    default_top_k: int = Field(3, ge=1, description="Ranked labels per prediction when a job does not say top_k.")
    explain_occlusion_patch: int = Field(
        4,
        ge=1,
        le=28,
        description="Side in pixels of the square blanked per step of an occlusion explanation (TFLite models); "
        "must divide 28: 4 means 49 extra images per explained image.",
    )
    page_size_max: int = Field(500, ge=1, description="Largest page of results or jobs.")
    max_wait_s: float = Field(60.0, ge=0, description="Longest long poll (GET /v1/jobs/{id}?wait=).")
    wait_poll_interval_s: float = Field(
        0.5, gt=0, description="Fallback re-read interval of a long poll (a Redis notification wakes it first)."
    )
    api_threads: int = Field(32, ge=1, description="Threads per API process (long polls hold one each).")

    # --- batching ------------------------------------------------------------------------------------------
    inline_input_max_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="Classify inputs up to this size are stored in their job item's row (committed with the job) "
        "instead of the blob store: no blob write and read per image. 0 stores every input as a blob.",
    )
    max_batch: int = Field(64, ge=1, description="Largest forward pass of the micro-batcher (images).")
    max_batch_wait_ms: float = Field(10.0, ge=0, description="Longest a first image waits for company.")
    worker_concurrency: int = Field(32, ge=1, description="Task threads per inference worker process.")
    log_each_task: bool = Field(
        False,
        description="Log Celery's 'Task ... received' and '... succeeded' lines (and retries) for every task. Off: "
        "at hundreds of classify jobs per second they cost ~5% of the worker's interpreter time; Flower, the job "
        "records and the metrics have the same facts, and failures are logged either way.",
    )

    # --- lanes: one Celery queue per kind of work (docs/lanes.md) ---------------------------------------------
    queue_interactive: str = Field("interactive", min_length=1, description="Celery queue of classify jobs.")
    queue_bulk: str = Field("bulk", min_length=1, description="Celery queue of bulk scoring chunks.")
    queue_training: str = Field("training", min_length=1, description="Celery queue of training jobs.")
    queue_ops: str = Field(
        "ops", min_length=1, description="Celery queue of webhook deliveries, the reconciler, retention and purges."
    )
    interactive_backlog_max: int = Field(
        2000,
        ge=0,
        description="Classify messages waiting in the interactive lane past which POST /v1/jobs answers 503 "
        "lane-full with Retry-After (bulk jobs are never refused for it); 0 = no limit.",
    )
    lane_depth_cache_s: float = Field(
        0.5, ge=0, description="How long an API process reuses its reading of the interactive lane's depth."
    )
    lane_full_retry_after_s: int = Field(2, ge=1, description="Retry-After of a 503 lane-full answer.")
    worker_lanes: str = Field(
        "interactive,bulk,training,ops",
        description="Lanes an `inferq worker` serves unless --lanes says otherwise (comma-separated).",
    )
    max_priority: int = Field(
        2,
        ge=0,
        le=2,
        description="Highest `priority` (0 low, 1 normal, 2 high) a tenant may give a classify job unless "
        "INFERQ_TENANT_MAX_PRIORITY names the tenant; above it POST /v1/jobs answers 403 priority-not-allowed.",
    )
    tenant_max_priority: dict[str, Annotated[int, Field(ge=0, le=2)]] = Field(
        default_factory=dict,
        description='Per-tenant priority caps as JSON, e.g. {"batch-team": 1, "trial": 0} (tenant id -> highest '
        "priority); tenants not named get INFERQ_MAX_PRIORITY.",
    )

    def priority_cap(self, tenant_id: str) -> int:
        """The highest priority `tenant_id` may give a classify job."""
        return self.tenant_max_priority.get(tenant_id, self.max_priority)

    bulk_own_consumer: bool = Field(
        True,
        description="A worker serving the bulk lane with other lanes takes bulk chunks on consumer threads of their "
        "own (INFERQ_SCORE_PARALLEL_CHUNKS, one message each), outside Celery's prefetch window and pool, so "
        "reserved chunks never hold up classify jobs (worker/lanes.py). false: Celery's consumer takes them too.",
    )
    bulk_async_commit: bool = Field(
        True,
        description="A score chunk that does not finish its job commits without waiting for PostgreSQL's WAL flush "
        "(synchronous_commit off for that transaction), so bulk writes do not slow interactive commits; a "
        "PostgreSQL crash can then lose the last chunks' rows, which the reconciler scores again (docs/delivery.md).",
    )
    bulk_process: bool = Field(
        False,
        description="A worker serving the bulk lane with other lanes runs it as a child process (`inferq worker "
        "--lanes bulk --nice INFERQ_BULK_NICE`, restarted if it exits) instead of threads: its own interpreter lock "
        "and model threads, at a lower CPU priority, for a second copy of the model (docs/lanes.md).",
    )
    bulk_nice: int = Field(
        10, ge=0, le=19, description="How much lower the bulk lane's threads run in CPU priority (Linux nice)."
    )
    bulk_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the bulk child process's /metrics under INFERQ_BULK_PROCESS (0 = none; its score "
        "batches, images and chunk times are then not scraped). Give each worker's child its own port.",
    )

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
    model_ref_ttl_s: float = Field(
        1.0,
        ge=0,
        description="How long a worker reuses its resolution of a job's model (until an alias move takes effect), "
        "and the API its check that a submitted model exists.",
    )
    low_confidence_threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        description="A prediction whose top confidence is below this gets the `low-confidence` warning.",
    )
    gpu: str = Field("", description="GPU index for this worker ('' = CPU, or as CUDA_VISIBLE_DEVICES).")
    train_epochs: int = Field(12, ge=1, description="Epochs for the default model at first start.")
    mnist_cache: Path | None = Field(None, description="Path of mnist.npz if keras cannot download it.")

    # --- models and training ------------------------------------------------------------------------------
    train_max_epochs: int = Field(100, ge=1, description="Most epochs one training job may ask for.")
    train_max_batch_size: int = Field(1024, ge=1, description="Largest batch size one training job may ask for.")
    train_cancel_check_batches: int = Field(1, ge=1, description="Training batches between two cancel checks.")
    train_max_items: int = Field(
        60_000, ge=1, description="Most images of an uploaded dataset one training job loads into memory."
    )
    calibration_images: int = Field(500, ge=1, description="Training images used to calibrate int8 quantization.")
    benchmark_repeats: int = Field(30, ge=1, description="Timed calls per batch size when benchmarking a version.")
    model_upload_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Bytes of one uploaded model file.")
    train_time_limit: int = Field(
        3000, ge=1, description="Seconds a training-queue task may run (capped below INFERQ_VISIBILITY_TIMEOUT)."
    )

    # --- datasets and scoring ------------------------------------------------------------------------------
    chunk_size: int = Field(
        512,
        ge=1,
        description="Dataset items per scoring task (one Celery message) of pictures (zip, tar, JSONL) and of arrays "
        "of images other than 28x28, which are preprocessed one by one.",
    )
    array_chunk_size: int = Field(
        4096,
        ge=1,
        description="Dataset items per scoring task of an array dataset of 28x28 digits (.npy/.npz), which is scaled "
        "and scored as one block: larger chunks spread a chunk's fixed cost (its transaction, message and events) "
        "over more items. Arrays of other sizes are preprocessed image by image and use INFERQ_CHUNK_SIZE.",
    )
    score_batch: int = Field(256, ge=1, description="Images per forward pass when scoring a dataset.")
    score_parallel_chunks: int = Field(
        3,
        ge=1,
        description="Chunks a worker process scores at once (3: reading, forward passes and writing all overlap).",
    )
    bulk_shared_passes: int = Field(
        1,
        ge=0,
        description="Forward passes of bulk chunks that may run at once in a worker process that also serves "
        "classify jobs (0 = no limit). TensorFlow has one pool of compute threads per process, and a classify "
        "job's forward pass waits behind every bulk pass in it (docs/lanes.md). A bulk-only worker is not limited.",
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

    # --- abuse limits: queue caps, rate limits, idempotency keys ------------------------------------------------
    max_queued_jobs_per_tenant: int = Field(
        1000, ge=1, description="Queued or running jobs one tenant may have; past it new jobs get 429 queue-full."
    )
    max_queued_items_per_tenant: int = Field(
        2_000_000, ge=1, description="Unfinished items (images) over a tenant's queued or running jobs (429 past it)."
    )
    queue_cap_exact_margin: int = Field(
        64, ge=0, description="Within this many jobs of a queue cap the check locks the tenant (exact); 0 = always."
    )
    queue_full_retry_after_s: int = Field(30, ge=1, description="Retry-After of a 429 queue-full answer.")
    rate_limit_enabled: bool = Field(
        True,
        description="Limit requests per API key (per client address for requests that pass without one: "
        "/metrics while public, or everything with auth off).",
    )
    rate_limit: str = Field(
        "600/minute", description="Requests per key, e.g. '600/minute' or '20/second;600/minute' (Flask-Limiter)."
    )
    idempotency_ttl_s: float = Field(
        86400.0, ge=86400.0, description="How long an Idempotency-Key and its answer are kept (at least 24 h)."
    )
    idempotency_lease_s: float = Field(
        600.0, gt=0, description="A request holding a key this long without finishing (it died) frees the key."
    )
    idempotency_purge_interval_s: float = Field(3600.0, gt=0, description="How often expired keys are purged.")
    idempotency_max_response_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Meant as the largest answer kept for replay, but not enforced yet: no code reads it, and every "
        "answer is kept whatever its size.",
    )

    # --- access and privacy ---------------------------------------------------------------------------------
    auth_enabled: bool = Field(
        True,
        description="Every route but health, readiness, the API docs and (while INFERQ_METRICS_PUBLIC) /metrics "
        "needs an API key.",
    )
    api_key: SecretStr = Field(
        SecretStr(""), description="The CLI's API key; empty means the key `inferq up` saved in data_dir/api-key."
    )
    api_key_touch_interval_s: float = Field(
        60.0, ge=0, description="Least seconds between two writes of a key's last_used_at."
    )
    api_key_cache_s: float = Field(
        2.0,
        ge=0,
        description="Seconds an API process remembers a key that authenticated (no database read per request). "
        "A key revoked through this process's API stops at once; one revoked elsewhere (another API process, "
        "`inferq keys revoke`) stops within this time. 0 reads the database on every request.",
    )
    retention_days: float = Field(
        30.0, ge=0, description="Finished jobs and datasets older than this are deleted (0 keeps them forever)."
    )
    retention_interval_s: float = Field(3600.0, gt=0, description="How often the retention purge runs.")
    retention_batch: int = Field(500, ge=1, description="Jobs or datasets one retention run deletes at most.")

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not _S3_URL.match(value):
            raise ValueError("INFERQ_STORAGE_URL must be empty (local files) or s3://bucket[/prefix]")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if 28 % self.explain_occlusion_patch:
            raise ValueError(f"INFERQ_EXPLAIN_OCCLUSION_PATCH must divide 28, got {self.explain_occlusion_patch}")
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
    def api_key_file(self) -> Path:
        """Where `inferq up` keeps the local API key (mode 0600) for the CLI and the README's curl examples."""
        return self.data_dir / "api-key"

    @property
    def flower_auth_file(self) -> Path:
        """Where `inferq up` keeps Flower's generated user:password (mode 0600)."""
        return self.data_dir / "flower-auth"

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
