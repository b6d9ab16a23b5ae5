"""systemd/install.sh into a throw-away staging root (`--root`): the files it lays out with their modes and owners,
a second run that changes nothing, an upgrade that keeps settings and data, a failed migration that puts the
backup back and leaves the old release current, and an uninstall that keeps settings and data unless --purge.

The wheels are built once per session from a copy of this source tree (a second release adds a migration, a
third has a migration that fails). The installer is the real script with two documented seams for offline
installs: POS_EDGE_PIP_ARGS (here: no index, no dependencies) and POS_EDGE_PYTHON (the interpreter of this
test's environment); the releases find the agent's dependencies through PYTHONPATH, pointed at this test
environment's site-packages, so no package is downloaded. apt-get, systemctl, runuser and udevadm are what
--root leaves out; the live path differs from this one only in those calls.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from agent.db import head_revision, open_database
from agent.member_cache import MemberCache, MemberChange
from tests.support.credentials import PHONE_KEY_BYTES

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "systemd" / "install.sh"
IN_CI = os.environ.get("CI") == "true"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
UPGRADE_REVISION = "9001"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer creates users and owners: root only")


def _missing(tool: str) -> None:
    message = f"{tool} is missing: run `make setup` (it installs the Debian packages the checks need)"
    pytest.fail(message) if IN_CI else pytest.skip(message)


# --- wheels -----------------------------------------------------------------------------------------------------

MIGRATION = '''"""{doc}

Revision ID: {revision}
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))
{fail}

def downgrade() -> None:
    op.drop_table("{table}")
'''


def _build_wheel(work: Path, version: str, migration: str | None) -> Path:
    source = work / f"src-{version}"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for folder in ("agent", "drivers", "kiosk_ui", "central"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    shutil.copy(REPO / "README.md", source / "README.md")
    pyproject = (REPO / "pyproject.toml").read_text()
    (source / "pyproject.toml").write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject, count=1)
    )
    if migration is not None:
        (source / "agent" / "migrations" / "versions" / f"{UPGRADE_REVISION}_test.py").write_text(migration)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "wheels"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return next((work / "wheels").glob(f"pos_edge_agent-{version}-*.whl"))


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("wheels")
    head = head_revision()
    adds = MIGRATION.format(
        doc="A table, to see the upgrade migrate.",
        revision=UPGRADE_REVISION,
        down=head,
        table="upgrade_marker",
        fail="",
    )
    fails = MIGRATION.format(
        doc="Fails half-way, to see the installer roll back.",
        revision=UPGRADE_REVISION,
        down=head,
        table="half_done",
        fail='    raise RuntimeError("this migration fails on purpose")\n',
    )
    return {
        "v1": _build_wheel(work, "0.1.0", None),
        "v2": _build_wheel(work, "0.2.0", adds),
        "broken": _build_wheel(work, "0.3.0", fails),
    }


def release_id(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        version = record.split("/")[0].removesuffix(".dist-info").split("-", 1)[1]
        return f"{version}-{hashlib.sha256(archive.read(record)).hexdigest()[:12]}"


# --- the staging root -------------------------------------------------------------------------------------------


def new_root(where: Path) -> Path:
    """A root with the account files of a minimal Debian: no input group yet (the installer adds it)."""
    etc = where / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nlp:x:7:\ndialout:x:20:\nvideo:x:44:\n")
    for name, text in (
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\nlp:*::\ndialout:*::\nvideo:*::\n"),
    ):
        (etc / name).write_text(text)
        (etc / name).chmod(0o600)
    return where


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "POS_EDGE_PYTHON": BASE_PYTHON,
        "POS_EDGE_PIP_ARGS": "--no-deps --no-index --ignore-installed",
        "PYTHONPATH": SITE_PACKAGES,
    }
    done = subprocess.run(
        ["bash", str(INSTALLER), "--root", str(root), *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and done.returncode != 0:
        raise AssertionError(f"install.sh {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheels) -> Path:
    """Release 0.1.0 with the kiosk screen, installed once; tests work on copies."""
    root = new_root(tmp_path_factory.mktemp("installed") / "root")
    install(root, "--kiosk", "--source", str(wheels["v1"]))
    return root


@pytest.fixture
def root(installed: Path, tmp_path: Path) -> Path:
    return copy_root(installed, tmp_path / "root")


def copy_root(source: Path, target: Path) -> Path:
    """A copy with owners kept (shutil.copytree would give every file to root)."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def account(root: Path, file: str, name: str) -> list[str]:
    for line in (root / "etc" / file).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"no {name} in {file}")


def mode_owner(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def agent_database(root: Path) -> Path:
    return root / "var/lib/pos-edge/agent.db"


def run_release(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The current release's own `pos-edge`, on the staging root's settings and database."""
    env = {**os.environ, "PYTHONPATH": SITE_PACKAGES, "POS_EDGE_STORAGE__DATABASE": str(agent_database(root))}
    python = root / "opt/pos-edge/current/bin/python"
    return subprocess.run([str(python), "-m", "agent", *args], env=env, capture_output=True, text=True)


def migrate(root: Path) -> subprocess.CompletedProcess[str]:
    return run_release(root, "db", "migrate", "--config", str(root / "etc/pos-edge/agent.toml"))


def with_a_member(root: Path) -> None:
    """A database made by the installed release, holding one member, as a till in use has."""
    made = migrate(root)
    assert made.returncode == 0, made.stderr
    engine = open_database(agent_database(root))
    try:
        MemberCache(engine, PHONE_KEY_BYTES).apply(
            [
                MemberChange(
                    member_id="m1",
                    version=1,
                    tier="gold",
                    points=1200,
                    display_name="王*明",
                    phone_masked="138****5678",
                    identifiers=(("card_no", "8800012345678"),),
                )
            ],
            cursor="feed-42",
        )
    finally:
        engine.dispose()
    uid, gid = int(account(root, "passwd", "pos-edge")[2]), int(account(root, "group", "pos-edge")[2])
    for file in agent_database(root).parent.glob("agent.db*"):
        os.chown(file, uid, gid)


def member_points(database: Path) -> int | None:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        row = connection.execute("SELECT points FROM member WHERE id = 'm1'").fetchone()
    return row[0] if row else None


def schema(database: Path) -> tuple[str, set[str]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return revision, tables


def tree(root: Path) -> dict[str, tuple]:
    """Every path with its mode, owner and content (or link target): what a second run must not change."""
    seen = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative.startswith("run/lock"):
            continue
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = None
        seen[relative] = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, what)
    return seen


# --- tests ------------------------------------------------------------------------------------------------------


def test_a_fresh_install_lays_out_users_settings_program_and_units(root: Path, wheels):
    user = account(root, "passwd", "pos-edge")
    uid, gid = int(user[2]), int(user[3])
    assert user[5:] == ["/var/lib/pos-edge", "/usr/sbin/nologin"]
    assert gid == int(account(root, "group", "pos-edge")[2])
    for group in ("dialout", "lp", "video", "input"):  # input was missing: the installer made it
        assert "pos-edge" in account(root, "group", group)[3].split(","), group
    assert account(root, "passwd", "pos-kiosk")[6] == "/usr/sbin/nologin"

    # Settings: the store may read them through the agent's group; secrets are root's alone.
    assert mode_owner(root / "etc/pos-edge") == (0o750, 0, gid)
    assert mode_owner(root / "etc/pos-edge/agent.toml") == (0o640, 0, gid)
    assert (root / "etc/pos-edge/agent.toml").read_text() == (REPO / "config/example.toml").read_text()
    assert mode_owner(root / "etc/pos-edge/secrets.env") == (0o600, 0, 0)
    assert re.search(r"(?m)^POS_EDGE_API__TOKEN=[0-9a-f]{64}$", (root / "etc/pos-edge/secrets.env").read_text())
    assert mode_owner(root / "var/lib/pos-edge") == (0o700, uid, gid)
    assert mode_owner(root / "var/lib/pos-edge/backups") == (0o700, uid, gid)

    # The program: one release, root's, that the agent's user cannot change; `current` points at it.
    release = release_id(wheels["v1"])
    assert os.readlink(root / "opt/pos-edge/current") == f"releases/{release}"
    program = root / "opt/pos-edge/releases" / release
    assert (program / ".complete").exists()
    assert not [
        p for p in program.rglob("*") if not p.is_symlink() and (p.lstat().st_uid != 0 or p.lstat().st_mode & 0o022)
    ]
    # Its scripts name where the release is on the box, not the staging root.
    assert (program / "bin/pos-edge").read_text().splitlines()[0] == f"#!/opt/pos-edge/releases/{release}/bin/python"
    checked = run_release(root, "config", "check", str(root / "etc/pos-edge/agent.toml"))
    assert checked.returncode == 0, checked.stderr
    assert not (
        program / "lib/python3.11/site-packages/psycopg"
    ).exists()  # central's PostgreSQL driver is not a till's

    units = root / "etc/systemd/system"
    for unit in ("pos-edge.service", "pos-edge-kiosk.service"):
        assert (units / unit).read_text() == (REPO / "systemd" / unit).read_text()
        assert mode_owner(units / unit)[0] == 0o644
        assert os.readlink(units / "multi-user.target.wants" / unit) == f"/etc/systemd/system/{unit}"
    assert os.access(program / "libexec/pos-edge-kiosk-page", os.X_OK)
    assert os.readlink(root / "usr/local/bin/pos-edge") == "/opt/pos-edge/current/bin/pos-edge"
    assert (root / "etc/modules-load.d/pos-edge.conf").read_text() == (
        REPO / "systemd/modules-load.d/pos-edge.conf"
    ).read_text()
    assert (root / "etc/udev/rules.d/70-pos-edge.rules").read_text() == (
        REPO / "systemd/udev/70-pos-edge.rules"
    ).read_text()


def test_a_second_run_changes_nothing(root: Path, wheels):
    (root / "etc/udev/rules.d/70-pos-edge.rules").write_text(
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0c2e", SYMLINK+="pos-scanner-1"\n'
    )
    before = tree(root)
    again = install(root, "--source", str(wheels["v1"]))
    assert f"release {release_id(wheels['v1'])} is already installed" in again.stdout
    assert tree(root) == before  # the same users, token, modes, owners, and the store's own udev rules


def test_an_upgrade_backs_up_migrates_and_keeps_settings_and_data(root: Path, wheels):
    with_a_member(root)
    settings = root / "etc/pos-edge/agent.toml"
    settings.write_text(settings.read_text().replace('name = "上海徐汇店"', 'name = "静安店"'))
    secrets = root / "etc/pos-edge/secrets.env"
    secrets.write_text(secrets.read_text() + "POS_EDGE_CENTRAL__TOKEN=store-token-kept\n")
    kept = {path: path.read_text() for path in (settings, secrets)}

    upgraded = install(root, "--source", str(wheels["v2"]))

    new, old = release_id(wheels["v2"]), release_id(wheels["v1"])
    assert f"upgrading {old} -> {new}" in upgraded.stdout
    assert os.readlink(root / "opt/pos-edge/current") == f"releases/{new}"
    assert (root / f"opt/pos-edge/releases/{old}").is_dir()  # kept, to go back to by hand
    assert {path: path.read_text() for path in kept} == kept
    assert member_points(agent_database(root)) == 1200
    revision, tables = schema(agent_database(root))
    assert revision == UPGRADE_REVISION and "upgrade_marker" in tables
    (backup,) = (root / "var/lib/pos-edge/backups").glob(f"pre-upgrade-{old}-*.db")
    assert member_points(backup) == 1200 and schema(backup)[0] == head_revision()
    uid = int(account(root, "passwd", "pos-edge")[2])
    assert {p.stat().st_uid for p in agent_database(root).parent.rglob("*")} == {
        uid
    }  # the agent can still write it all


def test_a_failed_migration_restores_the_backup_and_keeps_the_old_release(root: Path, wheels):
    with_a_member(root)
    old = release_id(wheels["v1"])

    failed = install(root, "--source", str(wheels["broken"]), check=False)

    assert failed.returncode == 1
    assert "this migration fails on purpose" in failed.stderr
    assert f"upgrade to {release_id(wheels['broken'])} failed while migrating the database" in failed.stderr
    assert f"{old} is still the current release" in failed.stderr
    assert os.readlink(root / "opt/pos-edge/current") == f"releases/{old}"
    revision, tables = schema(agent_database(root))
    assert revision == head_revision() and "half_done" not in tables
    assert member_points(agent_database(root)) == 1200
    assert list((root / "var/lib/pos-edge").glob("agent.db.failed-upgrade-*"))  # what the migration left, kept aside
    assert migrate(root).stdout.strip().endswith(f"already at {head_revision()}")
    # The old release's units stay too: only a release that became current brings its own.
    assert (root / "etc/systemd/system/pos-edge.service").read_text() == (REPO / "systemd/pos-edge.service").read_text()


def test_uninstall_keeps_settings_and_data_and_purge_removes_them(root: Path):
    with_a_member(root)
    gone = [
        "opt/pos-edge",
        "etc/systemd/system/pos-edge.service",
        "etc/systemd/system/pos-edge-kiosk.service",
        "etc/systemd/system/multi-user.target.wants/pos-edge.service",
        "etc/modules-load.d/pos-edge.conf",
        "etc/udev/rules.d/70-pos-edge.rules",
        "usr/local/bin/pos-edge",
    ]

    removed = install(root, "--uninstall")

    assert [p for p in gone if (root / p).exists() or (root / p).is_symlink()] == []
    assert "settings in /etc/pos-edge and data in /var/lib/pos-edge are kept" in removed.stdout
    assert member_points(agent_database(root)) == 1200
    assert (root / "etc/pos-edge/secrets.env").exists() and account(root, "passwd", "pos-edge")

    install(root, "--uninstall", "--purge")

    assert not (root / "etc/pos-edge").exists() and not (root / "var/lib/pos-edge").exists()
    assert not re.search(
        r"(?m)^pos-(edge|kiosk):", (root / "etc/passwd").read_text() + (root / "etc/group").read_text()
    )


def test_uninstall_keeps_udev_rules_the_store_filled_in(root: Path):
    rules = root / "etc/udev/rules.d/70-pos-edge.rules"
    rules.write_text('SUBSYSTEM=="tty", ATTRS{idVendor}=="0c2e", SYMLINK+="pos-scanner-1"\n')
    removed = install(root, "--uninstall")
    assert rules.exists() and "kept /etc/udev/rules.d/70-pos-edge.rules" in removed.stdout


def test_bad_arguments_are_refused_with_a_message(tmp_path: Path):
    root = new_root(tmp_path / "root")
    for args, message in (
        (["--purge"], "--purge goes with --uninstall"),
        (["--source", str(tmp_path / "nothing")], "neither a wheel nor a source tree"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
    ):
        done = install(root, *args, check=False)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
    assert not (root / "opt/pos-edge/current").exists()


def test_installed_units_pass_systemd_analyze_verify(installed: Path, tmp_path: Path):
    """The units as installed, with the programs they name: the release's pos-edge and kiosk page, Debian's cage
    and chromium (copied in, as the packages put them on the box), and the system's own units they order after."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        _missing("systemd-analyze (Debian's systemd package)")
    for program in ("/usr/bin/cage", "/usr/bin/chromium"):
        if not os.access(program, os.X_OK):
            _missing(program)
    root = copy_root(installed, tmp_path / "root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    for program in ("/usr/bin/cage", "/usr/bin/chromium"):
        shutil.copy2(program, root / program.lstrip("/"))
    units = [f"/etc/systemd/system/{unit}" for unit in ("pos-edge.service", "pos-edge-kiosk.service")]
    done = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", *units], capture_output=True, text=True)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_installer_and_the_kiosk_page_script_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        _missing("shellcheck")
    done = subprocess.run(
        [shellcheck, str(INSTALLER), str(REPO / "systemd/pos-edge-kiosk-page")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_a_till_gets_no_postgresql_driver_and_central_without_it_says_what_to_install(wheels, tmp_path: Path):
    with zipfile.ZipFile(wheels["v1"]) as archive:
        metadata = archive.read("pos_edge_agent-0.1.0.dist-info/METADATA").decode()
    psycopg = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: psycopg")]
    assert psycopg and all('extra == "central"' in line for line in psycopg)

    settings = tmp_path / "central.toml"
    settings.write_text('database_url = "postgresql://central@127.0.0.1:1/central"\n')
    hide_psycopg = "import sys; sys.modules['psycopg'] = None; from central.cli import main; main()"
    env = {**os.environ, "POS_CENTRAL_PHONE_HASH_KEY": "0123456789abcdef-test"}
    done = subprocess.run(
        [sys.executable, "-c", hide_psycopg, "db", "upgrade", "--config", str(settings)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert (done.returncode, done.stderr) == (
        1,
        "error: PostgreSQL needs the psycopg driver: pip install 'pos-edge-agent[central]'\n",
    )
