"""The one Settings object of a CLI command, built at the edge and kept in the click context."""

from __future__ import annotations

import sys

import click

from shared.config.settings import Settings

_KEY = "inferq.settings"


def load_settings(**overrides: object) -> Settings:
    """The settings, or a one-line error and exit 2 if they are invalid or unsafe (no traceback)."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"inferq: refusing to start: {reasons}", file=sys.stderr)
        sys.exit(2)


def command_settings() -> Settings:
    """This command's settings: built once (on first use) per command and shared by everything it calls."""
    meta = click.get_current_context().find_root().meta
    if _KEY not in meta:
        meta[_KEY] = load_settings()
    settings: Settings = meta[_KEY]
    return settings
