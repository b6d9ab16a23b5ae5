"""`pos-edge`: run the agent and the tools a store's IT person needs around it.

Errors a person can act on are printed as one clear message with a non-zero exit, never as a traceback:
exit 2 for a bad settings file or arguments, 1 for anything else that stopped the command.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from agent import __version__, logs
from agent.codes import CodeRules, classify
from agent.db import StorageError, open_database
from agent.journal import verify
from agent.member_cache import MemberCache, PhoneLookupUnavailable
from agent.pii import InvalidPhoneNumber
from agent.settings import LoadedSettings, SettingsError, load_settings

DEFAULT_CONFIG = "/etc/pos-edge/agent.toml"
CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("POS_EDGE_CONFIG", DEFAULT_CONFIG),
    show_default=f"$POS_EDGE_CONFIG or {DEFAULT_CONFIG}",
    help="Settings file.",
)

log = logging.getLogger("agent.cli")


def _load(path: Path) -> LoadedSettings:
    loaded = load_settings(path)
    for warning in loaded.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return loaded


@click.group()
@click.version_option(__version__, prog_name="pos-edge")
def cli() -> None:
    """POS Edge Agent: pay-as-member checkout at the till and the kiosk."""


@cli.command()
@CONFIG_OPTION
def run(config_path: Path) -> None:
    """Run the agent until Ctrl-C or SIGTERM."""
    from agent.runtime import serve  # the web stack loads only for the long-running command

    settings = _load(config_path).settings
    logs.configure(settings.logging.level)
    log.info(
        "starting",
        extra={
            "version": __version__,
            "config": str(config_path),
            "store": f"{settings.store.id} {settings.store.name}",
            "station": f"{settings.station.kind} {settings.station.id}",
            "central": settings.central.url,
            "database": str(settings.storage.database),
        },
    )
    serve(settings)


@cli.group()
def config() -> None:
    """Check settings files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE; print a summary (exit 0) or every bad key with the fix (exit 2)."""
    settings = _load(file).settings
    secret = lambda value: "set" if value.get_secret_value() else "not set"  # noqa: E731
    devices = settings.devices
    lines = [
        f"{file}: OK",
        f"  store      {settings.store.id} {settings.store.name} ({settings.store.timezone}, day starts {settings.store.business_day_cutoff_hour:02d}:00)",
        f"  station    {settings.station.kind} {settings.station.id} {settings.station.name}".rstrip(),
        f"  central    {settings.central.url} (token {secret(settings.central.token)})",
        *(f"  scanner    {s.id} {s.url}" for s in devices.scanners),
        *(
            [f"  camera     {devices.camera.id} {devices.camera.url} ({devices.camera.decoder})"]
            if devices.camera
            else []
        ),
        *(
            [f"  printer    {devices.printer.id} {devices.printer.url} ({devices.printer.paper_width_mm} mm)"]
            if devices.printer
            else []
        ),
        f"  card codes {', '.join(settings.codes.card_patterns) or 'none'}",
        f"  api        http://{settings.api.host}:{settings.api.port} (token {secret(settings.api.token)})",
        f"  database   {settings.storage.database}",
        f"  phones     {'looked up by keyed hash' if settings.privacy.phone_hash_key else 'no lookup (privacy.phone_hash_key not set)'}",
        f"  approval   {_approval_line(settings)}",
        f"  e-receipt  {_e_receipt_line(settings)}",
    ]
    click.echo("\n".join(lines))


def _e_receipt_line(settings) -> str:
    template = settings.e_receipt_template
    if "{token}" in template and settings.privacy.phone_hash_key is None:
        return "no QR code on receipts (privacy.phone_hash_key not set: no token can be minted)"
    return f"QR code links to {template}"


def _approval_line(settings) -> str:
    approval = settings.approval
    if not approval.actions:
        return "none needed (approval.actions is empty)"
    return f"{', '.join(approval.actions)} by {len(approval.supervisors)} supervisor(s)"


@cli.command("hash-secret")
def hash_secret_command() -> None:
    """Hash a supervisor's PIN or card text for [[approval.supervisors]] (pin_hash, card_hash).

    The secret is asked for, never taken as an argument: it would stay in the shell's history."""
    from agent.approval import hash_secret

    secret = click.prompt("PIN or card text", hide_input=True, confirmation_prompt=True)
    if not secret.strip():
        raise click.ClickException("an empty secret approves nothing")
    click.echo(hash_secret(secret))


@cli.group()
def codes() -> None:
    """Inspect scanned codes."""


@codes.command("classify")
@click.argument("texts", nargs=-1, required=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take card, coupon and guide patterns from this settings file.",
)
def codes_classify(texts: tuple[str, ...], config_path: Path | None) -> None:
    """Print one JSON object per TEXT: its kind, provider and value (auth codes masked)."""
    rules = _load(config_path).settings.codes.rules() if config_path else CodeRules()
    for text in texts:
        click.echo(json.dumps(classify(text, rules).to_public(), ensure_ascii=False))


@cli.group()
def journal() -> None:
    """Check the transaction journal."""


@journal.command("verify")
@CONFIG_OPTION
def journal_verify(config_path: Path) -> None:
    """Check every station's hash chain; exit 1 at the first broken link."""
    engine = open_database(_load(config_path).settings.storage.database)
    try:
        report = verify(engine)
    finally:
        engine.dispose()
    broken = report.first_break
    if broken is None:
        purged = (
            f", {report.purged} older rows purged by retention (chains start at their checkpoints)"
            if report.purged
            else ""
        )
        click.echo(f"journal OK: {report.rows} rows, {report.stations} station(s){purged}")
        return
    where = f"row seq={broken.seq}" + (f" id={broken.id} station={broken.station_id}" if broken.id else "")
    click.echo(f"journal BROKEN at {where}: {broken.reason}", err=True)
    sys.exit(1)


@cli.command("backup")
@CONFIG_OPTION
@click.option(
    "--to",
    "to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write this file instead of a dated one in storage.backup_dir.",
)
def backup_now(config_path: Path, to: Path | None) -> None:
    """Back the database up now, while the agent runs if it does, and verify the copy; exit 1 if it failed."""
    from agent.backup import BackupError, take_backup
    from agent.disk_space import MB

    storage = _load(config_path).settings.storage
    try:
        result = take_backup(
            storage.database,
            storage.backup_folder,
            storage.backup_keep_days,
            min_free_bytes=storage.min_free_mb * MB,
            to=to,
        )
    except (BackupError, OSError) as exc:
        click.echo(f"error: backup failed: {exc}", err=True)
        sys.exit(1)
    removed = (
        f"; {len(result.removed)} backup(s) older than {storage.backup_keep_days} days deleted"
        if result.removed
        else ""
    )
    click.echo(
        f"backup {result.path}: {result.size_bytes / MB:.1f} MB, {result.journal_rows} journal rows, verified, {result.seconds:.1f} s{removed}"
    )


@cli.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@CONFIG_OPTION
@click.option(
    "--yes", is_flag=True, help="Restore without asking (what the current database would lose is still printed)."
)
def restore_backup(file: Path, config_path: Path, yes: bool) -> None:
    """Replace the database with the backup FILE, once it is verified; the agent must be stopped. The current
    database is kept aside as agent.db.before-restore-<time>."""
    from agent.backup import BackupError, RestoreRefused, restore

    settings = _load(config_path).settings

    def confirm(check, current) -> bool:
        click.echo(
            f"backup {check.path}: schema {check.schema_revision}, {check.journal_rows} journal rows"
            f" (station {', '.join(check.stations) or 'none'}), verified"
        )
        if not current.readable:
            click.echo(f"the current database cannot be read ({current.problem}); it will be kept aside")
        elif current.loses_something:
            click.secho(
                f"the current database holds {current.newer_rows} transaction(s) after this backup, {current.unconfirmed_rows} not yet "
                f"confirmed by central, {current.open_sales} open sale(s) and {current.pending_refunds} refund(s) in flight: after the "
                "restore they are only in the copy kept aside",
                fg="yellow",
            )
        if yes:
            return True
        if not sys.stdin.isatty():
            raise RestoreRefused("not restored: add --yes to restore without a question")
        return click.confirm(f"replace {settings.storage.database} with this backup?", default=False)

    try:
        result = restore(
            file,
            settings.storage.database,
            api_host=settings.api.host,
            api_port=settings.api.port,
            station_id=settings.station.id,
            confirm=confirm,
        )
    except (BackupError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    kept = f"; the previous database is kept as {result.kept_aside}" if result.kept_aside else ""
    click.echo(
        f"restored {file} into {settings.storage.database}{kept}. Start the agent (systemctl start pos-edge): it upgrades an older schema itself"
    )


@cli.group()
def member() -> None:
    """Look members up in the local cache."""


@member.command("lookup")
@CONFIG_OPTION
@click.option("--card", "card_no", help="CRM or member card number.")
@click.option("--unionid")
@click.option("--phone", help="Mobile number (hashed before the lookup; never stored).")
def member_lookup(config_path: Path, card_no: str | None, unionid: str | None, phone: str | None) -> None:
    """Find a member in the offline cache by card number, UnionID or phone."""
    if [card_no, unionid, phone].count(None) != 2:
        raise click.UsageError("give exactly one of --card, --unionid, --phone")
    settings = _load(config_path).settings
    engine = open_database(settings.storage.database)
    try:
        cache = MemberCache(engine, settings.privacy.key_bytes())
        if phone is not None:
            found = cache.lookup_phone(phone)
        elif card_no is not None:
            found = cache.lookup("card_no", card_no)
        else:
            assert unionid is not None  # exactly one of the three was given
            found = cache.lookup("unionid", unionid)
    finally:
        engine.dispose()
    if found is None:
        click.echo("no such member in the local cache", err=True)
        sys.exit(1)
    click.echo(
        json.dumps(
            {
                "id": found.id,
                "tier": found.tier,
                "points": found.points,
                "name": found.display_name,
                "phone": found.phone_masked,
            },
            ensure_ascii=False,
        )
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for scripts.")
@click.option(
    "--udev",
    "as_udev",
    is_flag=True,
    help="udev rules giving what is attached stable names (/dev/pos-scanner-1, /dev/pos-printer) and the agent's groups.",
)
def devices(as_json: bool, as_udev: bool) -> None:
    """List scanners, cameras and printers attached to this host, each with the URL to put in settings."""
    from drivers.discovery import discover

    found = discover()
    if as_udev:
        from agent.udev import rules, usb_identity

        click.echo(rules([usb_identity(device) for device in found]), nl=False)
        return
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in found], ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo("no scanners, cameras or printers found (a USB device may need the agent's udev rules or a replug)")
        return
    for device in found:
        click.echo(f"{device.kind:<8} {device.url}\n         {device.description} ({device.path})")


@cli.group()
def db() -> None:
    """The agent's database."""


@db.command("migrate")
@CONFIG_OPTION
def db_migrate(config_path: Path) -> None:
    """Upgrade the database's schema to this release's (the installer runs it before switching releases).

    One transaction: a migration that fails leaves the schema as it was, and the command exits 1."""
    from agent.db import schema_revision

    path = _load(config_path).settings.storage.database
    before = _peek_schema(path)
    engine = open_database(path)
    try:
        after = schema_revision(engine)
    finally:
        engine.dispose()
    change = f"upgraded from {before or 'empty'} to {after}" if before != after else f"already at {after}"
    click.echo(f"database {path}: schema {change}")


def _peek_schema(path: Path) -> str | None:
    """The schema revision of an existing database, read without writing to it (None if new or unreadable)."""
    import sqlite3

    if not path.exists():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


@cli.group()
def sync() -> None:
    """Exchange data with the central service."""


@sync.command("now")
@CONFIG_OPTION
def sync_now(config_path: Path) -> None:
    """Push the outbox and pull member changes once; print what moved. Exit 1 when central cannot be reached."""
    import asyncio

    from agent.central_client import CentralError
    from agent.runtime import open_state, open_sync

    settings = _load(config_path).settings
    state = open_state(settings)
    sync = open_sync(settings, state)

    async def both() -> tuple:
        try:
            return await sync.push(), await sync.pull()
        finally:
            await sync.client.aclose()

    try:
        pushed, pulled = asyncio.run(both())
    except CentralError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        state.engine.dispose()
    click.echo(
        f"pushed {pushed.sent} transaction(s): {pushed.accepted} accepted, {pushed.duplicate} duplicate, {pushed.rejected} rejected; "
        f"{pushed.balances} balance(s) updated"
    )
    click.echo(
        f"pulled {pulled.upserted} member change(s) and {pulled.deleted} removal(s) in {pulled.pages} page(s); {pulled.keys} member-code key(s)"
    )
    status = sync.status()
    if status.outbox_rejected:
        click.echo(
            f"{status.outbox_rejected} transaction(s) rejected by central need a person: see GET /v1/sync", err=True
        )


@cli.command()
@CONFIG_OPTION
@click.option(
    "--day", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="Business day, YYYY-MM-DD."
)
@click.option("--json", "as_json", is_flag=True)
def reconcile(config_path: Path, day, as_json: bool) -> None:
    """Compare this station's business day with central's, transactions and code payments (a customer charged
    with no sale, a sale whose payment central does not have paid); exit 0 only when everything matches."""
    import asyncio

    from agent.central_client import CentralClient, CentralError
    from agent.reconcile import reconcile as run_reconcile

    settings = _load(config_path).settings
    engine = open_database(settings.storage.database)

    async def run():
        async with CentralClient(settings.central, settings.store.id) as client:
            return await run_reconcile(engine, client, settings.station.id, day.date())

    try:
        result = asyncio.run(run())
    except CentralError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    else:
        state = "MATCHED" if result.matched else "DIFFERENT"
        click.echo(
            f"{result.business_day} station {result.station_id}: {state}; store {result.store_count} transaction(s) "
            f"{result.store_total_fen} fen, central {result.central_count} transaction(s) {result.central_total_fen} fen"
        )
        for label, ids in (
            ("sent again (central lacked them)", result.requeued),
            ("waiting to be pushed", result.awaiting_push),
            ("rejected by central, need a person", result.rejected),
            ("at central but not in this journal", result.missing_at_store),
        ):
            if ids:
                click.echo(f"  {label}: {', '.join(ids)}")
        for mismatch in result.mismatched:
            click.echo(f"  {mismatch.id}: {mismatch.field} store {mismatch.store} central {mismatch.central}")
        if result.payments_checked:
            paid = ", ".join(
                f"{name} {p['count']} paid {p['paid_fen']} fen" for name, p in result.payments_paid.items()
            )
            waiting = (
                f"; {result.payments_awaiting} paid with no sale yet (within central's grace)"
                if result.payments_awaiting
                else ""
            )
            click.echo(f"  code payments: {paid or 'none paid'}{waiting}")
        for problem in result.payment_problems:
            refund = f" [refund {problem.out_refund_no}: {problem.refund_state}]" if problem.out_refund_no else ""
            click.echo(
                f"  payment {problem.kind} {problem.out_trade_no} {problem.provider} {problem.amount_fen} fen{refund}: {problem.reason}"
            )
    sys.exit(0 if result.matched else 1)


@cli.command("scan-test")
@click.option(
    "--scanner",
    "url",
    required=True,
    help="Scanner URL, e.g. serial:///dev/serial/by-id/...?baudrate=9600, hid://0c2e:0b61, camera:0, camera:///path/clip.mp4.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Stop after this many scans (default: until Ctrl-C or the end of a file).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Classify with this settings file's card, coupon and guide patterns.",
)
def scan_test(url: str, count: int | None, config_path: Path | None) -> None:
    """Read scans from one scanner and print each as a JSON line with its classification (auth codes masked)."""
    import queue

    from drivers.base import DeviceStatus, Scan
    from drivers.urls import parse_device_url, scanner_class

    rules = _load(config_path).settings.codes.rules() if config_path else CodeRules()
    events: queue.SimpleQueue[Scan | DeviceStatus] = queue.SimpleQueue()
    device_url = parse_device_url(url)
    reader = scanner_class(device_url).from_url(device_url, "scan-test", events.put, events.put)
    reader.start()
    seen = 0
    try:
        while count is None or seen < count:
            event = events.get()
            if isinstance(event, DeviceStatus):
                click.echo(f"{event.state.value}: {event.reason or url}", err=True)
                if event.reason == "source ended":
                    break
                continue
            seen += 1
            line = {"at": event.at.isoformat(), "symbology": event.symbology, **classify(event.text, rules).to_public()}
            click.echo(json.dumps(line, ensure_ascii=False), nl=True)
    except KeyboardInterrupt:
        pass
    finally:
        reader.stop()


@cli.command("print-test")
@click.option(
    "--printer",
    "url",
    help="Printer URL (default: the settings' printer), e.g. tcp://192.168.1.50:9100, usb://04b8:0202, file:///dev/usb/lp0.",
)
@CONFIG_OPTION
def print_test(url: str | None, config_path: Path) -> None:
    """Print the test page: Chinese text, a QR code and a barcode."""
    from agent.devices import open_printer_connection, preview_folder, printer_profile
    from agent.receipts import test_page
    from agent.settings import PrinterSettings
    from drivers.base import DeviceError
    from drivers.document import COLUMNS_BY_PAPER_MM
    from drivers.escpos_printer import print_job, render

    # --printer alone works without a settings file; with one, its printer's profile is kept.
    settings = _load(config_path).settings if config_path.exists() or url is None else None
    printer = settings.devices.printer if settings else None
    if url:
        printer = printer.model_copy(update={"url": url}) if printer else PrinterSettings(url=url)
    if printer is None:
        raise click.UsageError("no printer in the settings: give --printer URL")
    folder = preview_folder(settings) if settings else Path("receipts")
    data = render(
        test_page(settings.store.name if settings else "POS Edge", COLUMNS_BY_PAPER_MM[printer.paper_width_mm]),
        printer_profile(printer),
    )
    connection = open_printer_connection(printer, folder)
    try:
        status = print_job(connection, data)
    except DeviceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    where = f" (preview: {connection.preview_of(data)})" if hasattr(connection, "preview_of") else ""
    click.echo(
        f"test page sent to {printer.url}: {len(data)} bytes; printer online={status.online} paper={status.paper}{where}"
    )


@cli.command()
@CONFIG_OPTION
@click.option(
    "--secrets",
    "secrets_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="/etc/pos-edge/secrets.env",
    show_default=True,
    help="The service's EnvironmentFile, read when present so the checks use its tokens.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list of checks, for scripts and monitoring.")
def doctor(config_path: Path, secrets_path: Path, as_json: bool) -> None:
    """Check settings, service, database, disk, devices, central and the clock; exit 1 if any check fails."""
    from agent.doctor import Doctor, read_environment_file, render

    try:
        secrets = read_environment_file(secrets_path)
    except FileNotFoundError:
        secrets = {}
    except OSError as exc:
        click.secho(
            f"warning: {secrets_path} not read ({exc.strerror}): run as root to check with the service's tokens",
            fg="yellow",
            err=True,
        )
        secrets = {}
    for key, value in secrets.items():
        os.environ.setdefault(key, value)  # the caller's own environment wins, as for `pos-edge run`
    checks = Doctor(config_path).run()
    click.echo(json.dumps([c.as_dict() for c in checks], ensure_ascii=False, indent=2) if as_json else render(checks))
    sys.exit(1 if any(c.status == "fail" for c in checks) else 0)


@cli.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
def openapi(output: Path | None) -> None:
    """Print the local API's OpenAPI document (docs/agent-openapi.json is this output)."""
    from contextlib import asynccontextmanager

    from agent.api import create_app, openapi_json

    @asynccontextmanager
    async def nothing_to_open(app):
        yield

    # The document depends on no settings or data: an app with nothing behind it describes the same API.
    text = openapi_json(create_app(nothing_to_open))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
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
    except (StorageError, InvalidPhoneNumber, PhoneLookupUnavailable) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
