"""`pos-central`: run the reference central service and the few tools around it.

Errors a person can act on are printed as one clear message, never a traceback: exit 2 for a bad settings
file or arguments, 1 for anything else that stopped the command.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import click
import sqlalchemy as sa

from central import __version__
from central.clock import utcnow
from central.config import LoadedSettings, Settings, SettingsError, load_settings
from central.db import DatabaseError, open_database, read_session, write_session
from central.errors import CentralError
from central.pii import InvalidPhoneNumber

DEFAULT_CONFIG = "/etc/pos-central/central.toml"
CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("POS_CENTRAL_CONFIG", DEFAULT_CONFIG),
    show_default=f"$POS_CENTRAL_CONFIG or {DEFAULT_CONFIG}",
    help="Settings file.",
)

log = logging.getLogger("central.cli")


def _settings(path: Path) -> Settings:
    loaded: LoadedSettings = load_settings(path)
    return loaded.settings


def _engine(settings: Settings) -> sa.Engine:
    return open_database(settings.database_url)


@click.group()
@click.version_option(__version__, prog_name="pos-central")
def cli() -> None:
    """Reference central identity & card service for POS Edge Agents."""


@cli.command()
@CONFIG_OPTION
@click.option("--host", help="Listen address (default: the settings' host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default: the settings' port).")
def serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Upgrade the database schema, then serve the API until Ctrl-C or SIGTERM."""
    import uvicorn

    from central.main import create_app

    settings = _settings(config_path)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-run context lines say nothing useful here
    engine = _engine(settings)
    app = create_app(settings, engine)
    log.info("pos-central %s on http://%s:%s (%s)", __version__, host or settings.host, port or settings.port, engine.url.render_as_string(hide_password=True))
    try:
        uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level=settings.log_level.lower(), access_log=False)
    finally:
        engine.dispose()


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@CONFIG_OPTION
def db_upgrade(config_path: Path) -> None:
    """Upgrade the schema to this release (serve does it at start, too)."""
    from central.db import schema_revision

    engine = _engine(_settings(config_path))
    try:
        click.echo(f"database schema at revision {schema_revision(engine)}")
    finally:
        engine.dispose()


@cli.command("seed-demo")
@CONFIG_OPTION
@click.option("--members", type=click.IntRange(0, 1_000_000), default=300, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same members.")
def seed_demo(config_path: Path, members: int, seed: int) -> None:
    """Add the demo store (DEMO01, public token demo-store-token) and realistic demo members; running it again
    adds nothing. Only with environment = "development": the demo token is public."""
    from central.seed import DEMO_STORE_ID, seed_demo as run

    settings = _settings(config_path)
    if settings.environment != "development":
        raise click.UsageError('seed-demo creates a store with a public token; it runs only with environment = "development"')
    engine = _engine(settings)
    try:
        report = run(engine, settings.key_bytes(), members, seed)
    finally:
        engine.dispose()
    store = f"store {DEMO_STORE_ID} added" if report.store_added else f"store {DEMO_STORE_ID} present"
    click.echo(f"{report.members_added} members added, {report.members_total} in total; {store}")


@cli.group()
def store() -> None:
    """Stores and their tokens."""


@store.command("add")
@CONFIG_OPTION
@click.argument("store_id")
@click.option("--name", default="", help="Shown to operators.")
@click.option("--new-token", is_flag=True, help="The store exists: issue a new token (the old one stops working).")
def store_add(config_path: Path, store_id: str, name: str, new_token: bool) -> None:
    """Register STORE_ID and print its token, once: put it in the store agent's central.token."""
    from central.stores import add_store

    engine = _engine(_settings(config_path))
    try:
        with write_session(engine) as session:
            token = add_store(session, store_id, utcnow(), name=name, replace_token=new_token)
            session.commit()
    finally:
        engine.dispose()
    click.echo(token)
    click.echo(f"store {store_id}: this token is shown once; central keeps only its hash", err=True)


@cli.command("member-code")
@CONFIG_OPTION
@click.argument("member_id")
def member_code(config_path: Path, member_id: str) -> None:
    """Print a fresh signed member code for MEMBER_ID (what the member's app would show)."""
    from central.keys import member_code as sign

    engine = _engine(_settings(config_path))
    try:
        with write_session(engine) as session:
            code = sign(session, member_id, utcnow())
            session.commit()  # the first code of a new database also creates the signing key
    finally:
        engine.dispose()
    click.echo(code)


@cli.group()
def member() -> None:
    """Members."""


@member.command("merge")
@CONFIG_OPTION
@click.argument("survivor")
@click.argument("other")
def member_merge(config_path: Path, survivor: str, other: str) -> None:
    """Merge member OTHER into SURVIVOR: identifiers, coupons and points move; OTHER becomes a tombstone."""
    from central import feed, identity

    engine = _engine(_settings(config_path))
    try:
        with write_session(engine) as session:
            feed.lock(session)
            identity.merge(session, survivor, other, utcnow())
            session.commit()
            points = feed.balances(session, [survivor])[survivor]
    finally:
        engine.dispose()
    click.echo(f"{other} merged into {survivor}; {survivor} now has {points} points")


@member.command("link")
@CONFIG_OPTION
@click.option("--appid", required=True)
@click.option("--openid", required=True)
@click.option("--unionid", required=True)
def member_link(config_path: Path, appid: str, openid: str, unionid: str) -> None:
    """Record that OPENID of app APPID has UNIONID (merging two members found to share it)."""
    from central import feed, identity

    engine = _engine(_settings(config_path))
    try:
        with write_session(engine) as session:
            feed.lock(session)
            found = identity.link_openid(session, appid, openid, unionid, utcnow())
            session.commit()
    finally:
        engine.dispose()
    if found is None:
        raise CentralError("neither the openid nor the unionid belongs to a member; nothing linked")
    click.echo(f"linked to member {found}")


@cli.group()
def keys() -> None:
    """Member-code signing keys."""


@keys.command("rotate")
@CONFIG_OPTION
@click.option("--grace-hours", type=click.IntRange(0, 24 * 365), help="Default: the settings' key_grace_hours.")
def keys_rotate(config_path: Path, grace_hours: int | None) -> None:
    """Make a new signing key current; the old one keeps verifying for the grace period."""
    from central.keys import rotate

    settings = _settings(config_path)
    grace = timedelta(hours=settings.key_grace_hours if grace_hours is None else grace_hours)
    engine = _engine(settings)
    try:
        with write_session(engine) as session:
            kid = rotate(session, utcnow(), grace).kid
            session.commit()
    finally:
        engine.dispose()
    click.echo(f"key {kid} is current; earlier keys verify until {(utcnow() + grace).isoformat(timespec='seconds')}")


@keys.command("list")
@CONFIG_OPTION
def keys_list(config_path: Path) -> None:
    """Print the public keys agents are given, as JSON."""
    from central.keys import public_keys

    engine = _engine(_settings(config_path))
    try:
        with read_session(engine) as session:
            click.echo(public_keys(session, utcnow()).model_dump_json(indent=2))
    finally:
        engine.dispose()


@cli.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
def openapi(output: Path | None) -> None:
    """Print the OpenAPI document (docs/openapi.json is this output)."""
    from central.main import create_app, openapi_json

    # The document does not depend on settings or data: an unconnected app describes the same API.
    app = create_app(Settings(phone_hash_key="x" * 16, environment="development"), engine=sa.create_engine("sqlite://"))
    text = openapi_json(app)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="pos-central", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SettingsError as exc:
        click.echo(f"settings {exc.path} are not valid:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    except (CentralError, DatabaseError, InvalidPhoneNumber) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except sa.exc.SQLAlchemyError as exc:
        click.echo(f"error: database: {getattr(exc, 'orig', None) or exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
