"""`inferq`: run the stack (up, api, worker, flower, migrate, train-default) and use it (classify, jobs, models)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from shared.settings import Settings

console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """inferq: asynchronous batch inference for image classifiers.

    Every setting is an INFERQ_* environment variable (see README); with none set, everything runs on
    embedded defaults under ./var (SQLite, a bundled redis-server, local files).
    """


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

    Stack(Settings(), gpus=[g for g in gpus.split(",") if g.strip()], train_epochs=train_epochs).run()


@main.command()
@click.option("--host", default=None, help="Bind address (default INFERQ_API_HOST).")
@click.option("--port", type=int, default=None, help="Port (default INFERQ_API_PORT).")
@click.option("--workers", type=int, default=2, show_default=True, help="gunicorn worker processes.")
def api(host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API with gunicorn."""
    settings = Settings()
    bind = f"{host or settings.api_host}:{port or settings.api_port}"
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
            "8",
            "--access-logfile",
            "-",
            "api.app:create_app()",
        ],
    )


@main.command()
@click.option(
    "--gpu",
    default=None,
    help="GPU index to pin this worker to (sets CUDA_VISIBLE_DEVICES); default INFERQ_GPU, empty = CPU.",
)
@click.option("--queues", default="inference,training", show_default=True, help="Queues to consume.")
@click.option("--concurrency", type=int, default=None, help="Task threads (default INFERQ_WORKER_CONCURRENCY).")
@click.option("--beat/--no-beat", default=False, help="Also run the periodic reconciler in this process.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(gpu: str | None, queues: str, concurrency: int | None, beat: bool, loglevel: str) -> None:
    """Run a Celery worker (one process per GPU; named after its GPU or 'cpu')."""
    settings = Settings() if gpu is None else Settings(gpu=gpu)
    from worker.gpu import pin_gpu

    label = pin_gpu(settings.gpu)
    from worker.gpu import configure_tensorflow, device_summary

    gpus = configure_tensorflow()
    console.print(f"worker {label}: {device_summary()}" + ("" if gpus else " -- no GPU, running on the CPU"))
    from worker.celery_app import create_worker_app

    app = create_worker_app(settings)
    training_only = set(queues.split(",")) == {"training"}
    if training_only:  # one training job at a time, and never a second one reserved behind it
        concurrency = concurrency or 1
    argv = [
        "worker",
        f"--hostname={label}{'-training' if training_only else ''}@%h",
        f"--queues={queues}",
        "--pool=threads",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--loglevel={loglevel}",
        "--task-events",
    ]
    if training_only:
        argv.append("--prefetch-multiplier=1")
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    app.worker_main(argv)


@main.command()
@click.option("--port", type=int, default=None, help="Port (default INFERQ_FLOWER_PORT).")
@click.option("--address", default=None, help="Bind address (default INFERQ_API_HOST).")
def flower(port: int | None, address: str | None) -> None:
    """Run Flower, the live console of the workers and tasks."""
    from shared.celery_app import make_celery

    settings = Settings()
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
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from shared.db import upgrade_database

    settings = Settings()
    upgrade_database(settings)
    console.print(f"[green]database is at the newest schema[/] ({settings.resolved_database_url.split('@')[-1]})")


@main.command("train-default")
@click.option("--epochs", type=int, default=None, help="Training epochs (default INFERQ_TRAIN_EPOCHS).")
@click.option("--force", is_flag=True, help="Train a new version even if the model exists.")
def train_default(epochs: int | None, force: bool) -> None:
    """Train the default MNIST CNN (if not registered yet) and register it with the default alias."""
    from inferq.progress import train_with_progress

    train_with_progress(Settings(), epochs=epochs, force=force)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="name, name:version or name@alias (default: the default model).")
@click.option("--top-k", type=int, default=None, help="Ranked labels per image.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait for the result.")
@click.option("--api-url", default=None, help="API base URL (default INFERQ_API_URL or http://host:port).")
def classify(
    images: tuple[Path, ...], model: str | None, top_k: int | None, timeout: float, api_url: str | None
) -> None:
    """Classify image files: submit one job, wait for it, print a table."""
    from inferq.client import classify_files

    ok = classify_files(api_url or Settings().resolved_api_url, images, model=model, top_k=top_k, timeout=timeout)
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--status", default=None, help="Only jobs in this status.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--api-url", default=None)
def jobs(status: str | None, limit: int, api_url: str | None) -> None:
    """List recent jobs."""
    from inferq.client import show_jobs

    show_jobs(api_url or Settings().resolved_api_url, status=status, limit=limit)


@main.command()
@click.option("--api-url", default=None)
def models(api_url: str | None) -> None:
    """List models, versions, aliases and metrics."""
    from inferq.client import show_models

    show_models(api_url or Settings().resolved_api_url)


if __name__ == "__main__":  # pragma: no cover
    main()
