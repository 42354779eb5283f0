"""Training the default model from the CLI, with a progress bar over epochs (and over the rendering of its
realistic training copies before them)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.config.settings import Settings
from shared.db.engine import upgrade_database

console = Console(stderr=True)


def train_with_progress(settings: Settings, *, epochs: int | None = None, force: bool = False) -> None:
    """Train and register the default model unless it exists (or `force`), showing each epoch."""
    from worker.defaults import has_model, train_default_model

    upgrade_database(settings)
    if not force and has_model(settings, settings.default_model):
        console.print(f"[green]model {settings.default_model} is already registered[/] (use --force for a new version)")
        return
    total = epochs or settings.train_epochs
    console.print(
        f"training {settings.default_model} (the MNIST CNN), up to {total} epochs; early stopping may end it sooner"
    )
    with Progress(
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[logs]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=total, logs="loading data and TensorFlow...")

        def on_augment(done: int, planned: int) -> None:
            progress.update(task, logs=f"rendering training digits as users send them: {done:,}/{planned:,}")

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            text = (
                f"loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
                f"val_acc {logs.get('val_accuracy', 0):.4f}"
            )
            progress.update(task, completed=epoch, logs=text)  # epoch counts from 1

        mv = train_default_model(settings, epochs=total, on_epoch=on_epoch, on_augment=on_augment)
        progress.update(task, total=progress.tasks[0].completed)
    acc = mv.metrics.get("test_accuracy", 0.0)
    console.print(
        f"[green]registered {mv.ref}[/] as @{settings.default_alias}: test accuracy {acc:.4f} "
        f"on {mv.params.get('dataset', {}).get('source', '?')}, {mv.size_bytes / 1e6:.2f} MB"
    )
