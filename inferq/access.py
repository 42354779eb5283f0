"""`inferq keys` and `inferq tenants`: API keys and per-tenant retention, straight on the database (so the first
key can be made before any key exists), and the local key `inferq up` keeps for the CLI and curl."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from inferq.edge import command_settings
from shared.config.errors import InferqError
from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker, session_scope
from shared.tenancy import apikeys

out = Console()
err = Console(stderr=True)
LOCAL_KEY_NAME = "local (inferq up)"


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


def write_key_file(path: Path, key: str) -> None:
    """Write `key` to `path`, readable by its owner only (0600 from the start, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)


def ensure_local_key(settings: Settings, tenant_id: str = "default") -> tuple[str, bool]:
    """The key saved in data_dir/api-key if it still works, else a new one of `tenant_id` with every scope,
    saved there (mode 0600); returns (key, created)."""
    path = settings.api_key_file
    saved = path.read_text().strip() if path.is_file() else ""
    with _session(settings) as session:
        if saved and apikeys.authenticate(session=session, token=saved) is not None:
            return saved, False
        _, key = apikeys.create_key(session=session, tenant_id=tenant_id, scopes=apikeys.SCOPES, name=LOCAL_KEY_NAME)
    write_key_file(path, key)
    return key, True


def ensure_flower_auth(settings: Settings) -> tuple[str, bool]:
    """Flower's user:password: INFERQ_FLOWER_BASIC_AUTH if set, else Flower's own FLOWER_BASIC_AUTH (as the
    Kubernetes Secret sets it), else the one saved in data_dir/flower-auth, else a new `admin:<random>` saved there
    (mode 0600); returns (credentials, created)."""
    configured = settings.flower_basic_auth.get_secret_value() or os.environ.get("FLOWER_BASIC_AUTH", "")
    if configured:
        if ":" not in configured:
            raise SystemExit("INFERQ_FLOWER_BASIC_AUTH must be user:password")
        return configured, False
    path = settings.flower_auth_file
    saved = path.read_text().strip() if path.is_file() else ""
    if ":" in saved:
        return saved, False
    credentials = f"admin:{secrets.token_urlsafe(18)}"
    write_key_file(path, credentials)
    return credentials, True


def _fail(exc: InferqError) -> NoReturn:
    err.print(f"[red]error:[/] {exc.detail}")
    raise SystemExit(1)


@click.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke. Works on the database directly (INFERQ_DATABASE_URL)."""


@keys.command("create")
@click.option("--tenant", default="default", show_default=True, help="The tenant the key acts for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(apikeys.SCOPES),
    help="jobs (submit and read jobs, datasets, webhooks), models (train, promote, upload, optimize) or admin "
    "(manage keys); repeat it for several (default: jobs).",
)
@click.option("--name", default="", help="What the key is for.")
def keys_create(tenant: str, scopes: tuple[str, ...], name: str) -> None:
    """Create a key and print it once on stdout (only its hash is stored: keep it now)."""
    try:
        with _session(command_settings()) as session:
            row, key = apikeys.create_key(session=session, tenant_id=tenant, scopes=scopes or ("jobs",), name=name)
    except InferqError as exc:
        _fail(exc)
    err.print(f"created key [bold]{row.id}[/] of tenant {row.tenant_id} with scopes {', '.join(row.scopes)}")
    err.print("this is the only time the key is shown; send it as `Authorization: Bearer <key>`")
    click.echo(key)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys (default: every tenant's).")
def keys_list(tenant: str | None) -> None:
    """List keys (never their secrets): id, tenant, name, scopes, created, last used, revoked."""
    with _session(command_settings()) as session:
        rows = apikeys.list_keys(session=session, tenant_id=tenant)
        table = Table()
        for col in ("id", "tenant", "name", "scopes", "created", "last used", "revoked"):
            table.add_column(col, no_wrap=col in {"id", "tenant", "scopes"})
        for k in rows:
            when = [f"{t:%Y-%m-%d %H:%M}" if t else "" for t in (k.created_at, k.last_used_at, k.revoked_at)]
            table.add_row(k.id, k.tenant_id, k.name, ",".join(k.scopes), *when)
    out.print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (its prefix, as `keys list` shows it); requests with it get 401 from now on."""
    try:
        with _session(command_settings()) as session:
            apikeys.revoke_key(session=session, key_id=key_id, tenant_id=None)
    except InferqError as exc:
        _fail(exc)
    err.print(f"revoked key {key_id}")


@click.group()
def tenants() -> None:
    """Per-tenant settings: retention of finished jobs and datasets."""


@tenants.command("retention")
@click.argument("tenant")
@click.argument("days", type=click.FloatRange(min=0), required=False)
@click.option("--default", "use_default", is_flag=True, help="Drop the tenant's own period (INFERQ_RETENTION_DAYS).")
def tenants_retention(tenant: str, days: float | None, use_default: bool) -> None:
    """Show TENANT's retention, or set it to DAYS (0 keeps its data forever), or back to the default."""
    from shared.tenancy.retention import retention_overrides, set_retention

    settings = command_settings()
    try:
        with _session(settings) as session:
            if days is not None or use_default:
                set_retention(session=session, tenant_id=apikeys.check_tenant(tenant), days=days)
            own = retention_overrides(session).get(tenant)
    except InferqError as exc:
        _fail(exc)
    current = own if own is not None else settings.retention_days
    source = "its own" if own is not None else "the default, INFERQ_RETENTION_DAYS"
    click.echo(f"{tenant}: {'kept forever' if current == 0 else f'{current:g} days'} ({source})")
