"""`pos-central`: run the reference central service and the few tools around it.

Errors a person can act on are printed as one clear message, never a traceback: exit 2 for a bad settings
file or arguments, 1 for anything else that stopped the command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import click
import sqlalchemy as sa

from central import __version__
from central.clock import utcnow
from central.config import LoadedSettings, Settings, SettingsError, load_settings
from central.db import DatabaseError, Pool, hold_single_process, open_database, read_session, write_session
from central.errors import CentralError
from central.leases import instance_name
from central.payments.providers import ProviderSetupError
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
    for warning in loaded.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return loaded.settings


def _engine(settings: Settings) -> sa.Engine:
    return open_database(settings.database_url, Pool.from_settings(settings))


@click.group()
@click.version_option(__version__, prog_name="pos-central")
def cli() -> None:
    """Reference central identity & card service for POS Edge Agents."""


@cli.command()
@CONFIG_OPTION
@click.option("--host", help="Listen address (default: the settings' host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default: the settings' port).")
@click.option(
    "--jobs/--no-jobs",
    default=None,
    help="Run the periodic jobs here too (default: the settings' run_jobs); --no-jobs on web replicas when "
    "`pos-central worker` runs them.",
)
def serve(config_path: Path, host: str | None, port: int | None, jobs: bool | None) -> None:
    """Upgrade the database schema, then serve the API until Ctrl-C or SIGTERM. On PostgreSQL any number of these
    may serve one database (docs/DEPLOYING-CENTRAL.md); on SQLite one only."""
    import uvicorn

    from central.main import create_app

    settings = _settings(config_path)
    port = port or settings.port
    settings = _process(settings, instance_name(port))
    engine = _engine(settings)
    lock = _single_process(engine)
    app = create_app(settings, engine, run_jobs=jobs)
    log.info(
        "pos-central %s on http://%s:%s (%s), instance %s%s",
        __version__,
        host or settings.host,
        port,
        engine.url.render_as_string(hide_password=True),
        settings.instance,
        "" if app.state.run_jobs else ", no periodic jobs",
    )
    try:
        uvicorn.run(
            app,
            host=host or settings.host,
            port=port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        engine.dispose()
        if lock is not None:
            lock.close()


@cli.command()
@CONFIG_OPTION
def worker(config_path: Path) -> None:
    """Run the periodic jobs and take over the payments of replicas that died, without serving HTTP, until Ctrl-C or
    SIGTERM: the one process of a chain's deployment whose web replicas run `serve --no-jobs` (PostgreSQL only)."""
    settings = _process(_settings(config_path), instance_name(role="worker"))
    engine = _engine(settings)
    if engine.dialect.name == "sqlite":
        engine.dispose()
        raise click.ClickException(
            "the worker is for several processes on PostgreSQL; on SQLite `pos-central serve` runs the jobs itself"
        )
    try:
        log.info("pos-central %s worker %s (%s)", __version__, settings.instance, engine.url.render_as_string(True))
        asyncio.run(_work(settings, engine))
    finally:
        engine.dispose()


async def _work(settings: Settings, engine: sa.Engine) -> None:
    from central.background import Background
    from central.leases import Leases
    from central.metrics import CentralMetrics
    from central.payments.brand_cards import client_from_settings
    from central.payments.providers import build_providers

    assert settings.instance is not None
    background = Background(
        settings,
        engine,
        build_providers(settings),
        Leases(engine, settings.instance, settings.lease_seconds),
        run_jobs=True,
        metrics=CentralMetrics(engine),
        brand_card_api=client_from_settings(settings) if settings.wechat_member_card == "brand" else None,
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await background.start()
    try:
        await stopped.wait()
    finally:
        log.info("worker stopping: its leases are given up for another process to take at once")
        await background.stop()


def _process(settings: Settings, default_instance: str) -> Settings:
    """A long-running process's set-up: its logging, and its name among the processes (the settings' `instance`,
    else `default_instance`)."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-run context lines say nothing useful here
    if settings.instance is not None:
        return settings
    return settings.model_copy(update={"instance": default_instance})


def _single_process(engine: sa.Engine):
    """SQLite serves one process: refuse a second one on the same file, saying why."""
    try:
        return hold_single_process(engine)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None


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
    from central.seed import DEMO_STORE_ID, demo_member
    from central.seed import seed_demo as run

    settings = _settings(config_path)
    if settings.environment != "development":
        raise click.UsageError(
            'seed-demo creates a store with a public token; it runs only with environment = "development"'
        )
    engine = _engine(settings)
    try:
        report = run(engine, settings.key_bytes(), members, seed, payer_appid=settings.wechat_appid or None)
    finally:
        engine.dispose()
    store = f"store {DEMO_STORE_ID} added" if report.store_added else f"store {DEMO_STORE_ID} present"
    click.echo(f"{report.members_added} members added, {report.members_total} in total; {store}")
    click.echo("\n  Demo members (type the phone or card at the till; customer 000N's payment code pays as member N):")
    today = utcnow()
    for n in range(1, min(members, 4) + 1):
        m = demo_member(seed, n, settings.key_bytes(), today, settings.wechat_appid or None)
        coupon = f"  coupon {m.coupons[0]['code']} {m.coupons[0]['title']}" if m.coupons else ""
        phone = m.phone.removeprefix("+86") if m.phone else "-"
        click.echo(
            f"    {n:04d}  {m.id}  {m.tier:<8} {m.display_name:<4} phone {phone}  card {m.card_no() or '-'}{coupon}"
        )


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


@member.command("card")
@CONFIG_OPTION
@click.argument("member_id")
@click.option("--card-id", required=True, help="The WeChat member card's card_id.")
@click.option("--code", required=True, help="The member's card code (from the card activation).")
def member_card(config_path: Path, member_id: str, card_id: str, code: str) -> None:
    """Record that MEMBER_ID holds a WeChat member card: their points changes are pushed to it."""
    from central.payments.cards import register_card

    engine = _engine(_settings(config_path))
    try:
        with write_session(engine) as session:
            register_card(session, member_id, card_id, code, utcnow())
            session.commit()
    finally:
        engine.dispose()
    click.echo(f"member {member_id} holds card {card_id} ({code}); points changes from now on are pushed to it")


@cli.group()
def payments() -> None:
    """Code payments (docs/PAYMENTS.md)."""


@payments.command("reconcile")
@CONFIG_OPTION
@click.option(
    "--day",
    "day",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The bill's day (China time), YYYY-MM-DD.",
)
@click.option("--provider", "chosen", type=click.Choice(["wechat", "alipay", "all"]), default="all", show_default=True)
def payments_reconcile(config_path: Path, day, chosen: str) -> None:
    """Fetch the providers' settlement bills for DAY and check them against central's payments. Prints every
    difference (a customer charged for a sale the till gave up on, a paid order missing from the bill, an amount
    that differs); stores see the result next to their day summary."""
    import asyncio

    from central.payments.provider import ProviderError
    from central.payments.providers import build_providers
    from central.payments.reconcile import reconcile

    settings = _settings(config_path)
    providers = build_providers(settings)
    names = [n for n in providers if chosen in ("all", n)]
    if not names:
        raise click.UsageError(f"no {'payment provider' if chosen == 'all' else chosen} is configured in {config_path}")
    engine = _engine(settings)

    async def run_all():
        results = []
        try:
            for name in names:
                try:
                    results.append(await reconcile(engine, name, providers[name], day.date(), utcnow()))
                except ProviderError as exc:
                    raise CentralError(f"cannot get the {name} bill for {day.date()}: {exc}") from exc
        finally:
            for provider in providers.values():
                close = getattr(provider, "aclose", None)
                if close is not None:
                    await close()
        return results

    try:
        results = asyncio.run(run_all())
    finally:
        engine.dispose()
    for result in results:
        summary = f"{result.bill_rows} bill rows, {result.matched} matched, {len(result.issues)} to settle"
        click.echo(f"{result.provider} {result.day}: {summary}")
        for issue in result.issues:
            billed = "-" if issue.bill_amount_fen is None else issue.bill_amount_fen
            held = "-" if issue.store_amount_fen is None else issue.store_amount_fen
            amounts = f"bill {billed} fen, central {held} fen ({issue.store_state or 'unknown'})"
            click.echo(f"  {issue.kind}  {issue.out_trade_no}  {amounts}: {issue.detail}")


@payments.command("orphans")
@CONFIG_OPTION
@click.option(
    "--day",
    "day",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The payments' day (China time), YYYY-MM-DD.",
)
@click.option("--store", "store_id", help="Only this store (default: every store with code payments that day).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per store and line.")
def payments_orphans(config_path: Path, day, store_id: str | None, as_json: bool) -> None:
    """Match DAY's code payments to the sales the stores pushed: print the orphan charges (a customer charged with
    no sale, or for a sale cancelled whose reversal never happened) and the sales whose payment disagrees. Only
    reports: the running service refunds orphans itself when payments_orphan_refund is set."""
    import json

    from central.payments.orphans import Rules, check_day, stores_to_check

    settings = _settings(config_path)
    engine = _engine(settings)
    now = utcnow()
    try:
        with read_session(engine) as session:
            stores = [store_id] if store_id else [s for s, _ in stores_to_check(session, [day.date()])]
            checks = [(s, check_day(session, s, day.date(), now, Rules.from_settings(settings))) for s in stores]
    finally:
        engine.dispose()
    for store, check in checks:
        if as_json:
            click.echo(json.dumps({"store_id": store, **check.model_dump(mode="json")}, ensure_ascii=False))
            continue
        paid = (
            ", ".join(f"{name} {p.count} paid {p.paid_fen} fen" for name, p in check.paid.items())
            or "no code payments paid"
        )
        click.echo(
            f"store {store} {check.day}: {paid}; {check.matched} matched, {check.awaiting} awaiting, "
            f"{len(check.problems)} to settle"
        )
        for problem in check.problems:
            refund = f" [refund {problem.out_refund_no} {problem.refund_state}]" if problem.out_refund_no else ""
            click.echo(f"  {problem.kind}  {problem.out_trade_no}  {problem.amount_fen} fen{refund}: {problem.reason}")
    if not checks and not as_json:
        click.echo(f"{day.date()}: no code payments")


@cli.group()
def simulate() -> None:
    """Payment provider simulators for the demo and for trying a set-up (never for real money)."""


@simulate.command("wechat")
@CONFIG_OPTION
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Default: the port of the settings' wechat_base_url, else 8801."
)
@click.option(
    "--userpaying-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="How long a simulated customer takes to confirm.",
)
@click.option(
    "--slow-seconds", type=float, default=15.0, show_default=True, help="How long scenario 50 holds its answer."
)
@click.option(
    "--wechatpay-private-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="API v3: the private key of the settings' WeChat Pay public key, which signs the simulator's answers. "
    "Default: wechatpay_private_key.pem next to wechat_pay_public_key_path.",
)
def simulate_wechat(
    config_path: Path,
    host: str,
    port: int | None,
    userpaying_seconds: float,
    slow_seconds: float,
    wechatpay_private_key: Path | None,
) -> None:
    """Serve the WeChat Pay simulator (and the member-card API) with the settings' appid, mch_id, API key and
    card AppSecret, so the central service configured by the same file talks to it. It answers API v2, and API v3
    under /v3/... when the settings hold v3 keys (the merchant private key, the WeChat Pay public key and its id):
    it checks requests with the merchant's public key and signs answers with the WeChat Pay key pair. The auth
    code's last two digits pick the scenario (docs/PAYMENTS.md)."""
    from urllib.parse import urlsplit

    import uvicorn

    from central.payments.simulators.wechat import WeChatSimulator

    settings = _settings(config_path)
    if settings.environment != "development":
        raise click.UsageError(
            'the simulator answers payments it never charged; it runs only with environment = "development"'
        )
    if not (settings.wechat_appid and settings.wechat_mch_id and settings.wechat_api_key):
        raise click.UsageError(
            "set wechat_appid, wechat_mch_id and wechat_api_key in the settings (the simulator uses them)"
        )
    base = urlsplit(settings.wechat_base_url or "")
    common: dict = dict(
        appid=settings.wechat_appid,
        mch_id=settings.wechat_mch_id,
        api_key=settings.wechat_api_key.get_secret_value(),
        userpaying_seconds=userpaying_seconds,
        slow_seconds=slow_seconds,
        **(
            {"card_appsecret": settings.wechat_card_appsecret.get_secret_value()}
            if settings.wechat_card_appsecret
            else {}
        ),
    )
    merchant_key = settings.wechat_v3_private_key_path or settings.wechat_key_path
    if settings.wechat_pay_public_key_path and settings.wechat_pay_public_key_id and merchant_key:
        simulator: WeChatSimulator = _v3_simulator(settings, merchant_key, wechatpay_private_key, common)
        apis = "v2 and v3"
    else:
        if settings.wechat_pay_api == "v3":
            raise click.UsageError(
                "the simulator signs its v3 answers with a WeChat Pay public key pair: set wechat_pay_public_key_path "
                "and wechat_pay_public_key_id (the demo's keys are in config/demo-keys/)"
            )
        simulator = WeChatSimulator(**common)
        apis = "v2"
    port = port or base.port or 8801
    click.echo(f"WeChat Pay {apis} simulator for appid {settings.wechat_appid} on http://{host}:{port}", err=True)
    app = simulator.app()
    _install_wechat_api_simulator(settings, app, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _install_wechat_api_simulator(settings, app, port: int) -> None:
    """WeChat's server API for the settings' mini program and official account (login, phone number, followers),
    on the same port as the payment simulator (central/wechat/simulator.py; its paths are apart from WeChat Pay's)."""
    from urllib.parse import urlsplit

    from central.wechat.simulator import WeChatApiSimulator

    apps = {}
    for role in ("miniprogram", "official_account"):
        appid, secret = getattr(settings, f"wechat_{role}_appid"), getattr(settings, f"wechat_{role}_secret")
        if appid and secret:
            apps |= {f"{role}_appid": appid, f"{role}_secret": secret.get_secret_value()}
    if not apps:
        return
    WeChatApiSimulator(**apps).install(app)
    click.echo("WeChat server API simulator (mini program, official account) on the same port", err=True)
    if urlsplit(settings.wechat_api_base_url).port != port:
        click.echo(f"warning: wechat_api_base_url {settings.wechat_api_base_url} is not this port {port}", err=True)


def _v3_simulator(settings, merchant_key: Path, wechatpay_private_key: Path | None, common: dict):
    """The v2 and v3 simulator for these settings: the merchant's public key from its private key (both on this
    development machine), the WeChat Pay key pair from `wechatpay_private_key` checked against the settings'."""
    from central.payments.simulators.wechat_v3 import WeChatV3Simulator
    from central.payments.wechat_v3 import load_private_key, load_public_key, public_pem

    private_path = wechatpay_private_key or settings.wechat_pay_public_key_path.parent / "wechatpay_private_key.pem"
    try:
        merchant = load_private_key(merchant_key.read_bytes())
        signer_pem = private_path.read_text(encoding="ascii")
        signer = load_private_key(signer_pem)
        configured = load_public_key(settings.wechat_pay_public_key_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"the v3 simulator's keys: {exc}") from None
    if public_pem(signer) != public_pem(configured):
        raise click.UsageError(
            f"{private_path} is not the private key of wechat_pay_public_key_path {settings.wechat_pay_public_key_path}: "
            "central could not verify the simulator's answers"
        )
    return WeChatV3Simulator(
        **common,
        merchant_public_key_pem=public_pem(merchant),
        merchant_serial_no=settings.wechat_merchant_serial_no or "",
        wechatpay_private_key_pem=signer_pem,
        public_key_id=settings.wechat_pay_public_key_id,
    )


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
    except (CentralError, DatabaseError, InvalidPhoneNumber, ProviderSetupError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except sa.exc.SQLAlchemyError as exc:
        click.echo(f"error: database: {getattr(exc, 'orig', None) or exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
