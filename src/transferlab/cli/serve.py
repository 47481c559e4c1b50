"""`transferlab serve` (the HTTP service) and `transferlab keys create|list|revoke`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import app, command, out, print_json

if TYPE_CHECKING:
    from transferlab.serve.settings import Settings
    from transferlab.serve.store import Store

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL (default: $TRANSFERLAB_DB_URL, else SQLite in the data dir); "
        "e.g. postgresql+psycopg://user@host/transferlab.",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Images, models and the SQLite file (default: $TRANSFERLAB_DATA_DIR or the user "
        "data dir).",
    ),
]
KeyName = Annotated[str, typer.Argument(help="Who or what the key is for.")]
KeyId = Annotated[int, typer.Argument(help="Key id (see `keys list`).")]


def _settings(db: str | None, data_dir: Path | None) -> Settings:
    from pydantic import ValidationError

    from transferlab.exceptions import InvalidParameterError
    from transferlab.serve.settings import Settings

    overrides: dict[str, object] = {}
    if db:
        overrides["db_url"] = db
    if data_dir:
        overrides["data_dir"] = data_dir
    try:
        return Settings(**overrides)
    except ValidationError as exc:  # a bad TRANSFERLAB_* variable: say which, no traceback
        problems = "; ".join(
            f"TRANSFERLAB_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParameterError(f"invalid service settings: {problems}") from None


@command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    db: Db = None,
    data_dir: DataDir = None,
) -> None:
    """Run the HTTP service: Image Features API, Custom Collections API, docs at /docs.

    Every /v1 request needs an API key: create one first with `transferlab keys create NAME`.
    Limits and more settings come from TRANSFERLAB_* environment variables (see /docs).
    Run one server process per database: it owns the job queue and, at startup, marks jobs
    that a dead server left running as failed.

    Examples:
      transferlab keys create alice --data-dir srv && transferlab serve --data-dir srv
      TRANSFERLAB_MAX_UPLOAD_BYTES=2000000 transferlab serve --port 9000
    """
    import uvicorn

    from transferlab.serve.app import configure_logging, create_app

    settings = _settings(db, data_dir)
    configure_logging(settings.log_level)
    settings = _first_run(settings, host, port)
    import os

    os.umask(0o077)  # everything the server writes (models, exports, images) is its user's alone
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # the app logs each request as JSON
        # a connection-level backstop behind the app's own in-flight bound (which answers JSON)
        limit_concurrency=settings.max_inflight * 4 + 16,
    )


keys_app = typer.Typer(
    help="API keys for the service: create (printed once), list, revoke.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _store(db: str | None, data_dir: Path | None) -> Store:
    from transferlab.serve.store import Store

    settings = _settings(db, data_dir)
    return Store(settings.data_dir, settings.db_url)


@command("create", group=keys_app)
def keys_create(name: KeyName, db: Db = None, data_dir: DataDir = None) -> None:
    """Create a key and print it once (only its hash is stored: keep it safe)."""
    store = _store(db, data_dir)
    row, raw = store.create_key(name)
    out.print(f"created key {row.id} ({row.name}); it is shown only this once:")
    print(raw)


@command("list", group=keys_app)
def keys_list(db: Db = None, data_dir: DataDir = None, as_json: opt.Json = False) -> None:
    """Keys with id, name, prefix, creation time and whether revoked (never the key)."""
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "prefix": k.prefix + "…",
            "created": k.created.isoformat(timespec="seconds"),
            "revoked": k.revoked.isoformat(timespec="seconds") if k.revoked else None,
        }
        for k in _store(db, data_dir).list_keys()
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no keys; create one with `transferlab keys create NAME`")
    for r in rows:
        state = f"revoked {r['revoked']}" if r["revoked"] else "active"
        out.print(f"{r['id']:>4}  {r['prefix']:<14} {r['name']:<24} {r['created']}  {state}")


@command("revoke", group=keys_app)
def keys_revoke(key_id: KeyId, db: Db = None, data_dir: DataDir = None) -> None:
    """Revoke a key: requests with it get 401 at once. Its collections stay in the database."""
    row = _store(db, data_dir).revoke_key(key_id)
    out.print(f"revoked key {row.id} ({row.name})")


def _first_run(settings: Any, host: str, port: int) -> Any:
    """With no API key yet, a one-time setup token and the link that uses it: the page then
    creates the first key, no terminal needed beyond starting the server."""
    import secrets

    from transferlab.serve.store import Store

    store = Store(settings.data_dir, settings.db_url)
    try:
        if store.list_keys():
            return settings
    finally:
        store.close()
    token = secrets.token_urlsafe(24)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    out.print(
        f"first run, no API key yet: open http://{shown}:{port}/?setup={token} to create one "
        "(the link works once)",
        markup=False,
    )
    return settings.model_copy(update={"setup_token": token})
