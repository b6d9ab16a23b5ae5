"""The database survives what a store's disk does to it: first start, upgrades, read-only disks, newer releases."""

from __future__ import annotations

import os
import stat

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import agent.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from agent.db import (
    DatabaseCorrupt,
    DatabaseDirectoryMissing,
    DatabaseFromNewerRelease,
    DatabaseNotWritable,
    create_engine,
    head_revision,
    migrate,
    open_database,
    schema_revision,
)


def test_new_database_is_private_durable_and_at_head(engine, db_path):
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    with engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") >= 1000
    assert schema_revision(engine) == head_revision()
    for sidecar in ("-wal", "-shm"):
        assert stat.S_IMODE(os.stat(f"{db_path}{sidecar}").st_mode) == 0o600


def test_loose_file_mode_is_tightened(db_path):
    db_path.touch(mode=0o644)
    db_path.chmod(0o644)
    open_database(db_path).dispose()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_reopening_keeps_data_and_revision(engine, db_path, cache):
    from agent.member_cache import MemberChange

    cache.apply([MemberChange("m1", 1, tier="gold", points=10, identifiers=(("card_no", "8800001"),))], cursor="c1")
    engine.dispose()
    again = open_database(db_path)
    assert schema_revision(again) == head_revision()
    assert again.connect().exec_driver_sql("SELECT points FROM member WHERE id='m1'").scalar() == 10
    again.dispose()


def _text_is_text(context, inspected_column, metadata_column, inspected_type, metadata_type):
    # SQLModel declares str columns as VARCHAR, the migrations as TEXT: the same affinity in SQLite.
    if isinstance(inspected_type, sa.String) and isinstance(getattr(metadata_type, "impl", metadata_type), sa.String):
        return False
    return None


def test_models_match_migrations(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": _text_is_text})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_upgrade_from_first_release_keeps_data(db_path):
    engine = create_engine(db_path)
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO member VALUES ('m1', 'gold', 1200, '王小明', '138****5678', 7, '2026-01-01T00:00:00.000000+00:00')"
        )
        connection.exec_driver_sql("INSERT INTO member_identifier VALUES ('card_no', '88000012', 'm1')")
        connection.exec_driver_sql(
            "INSERT INTO sync_state VALUES ('member_feed_cursor', '7', '2026-01-01T00:00:00.000000+00:00')"
        )
    engine.dispose()

    upgraded = open_database(db_path)
    assert schema_revision(upgraded) == head_revision()
    with upgraded.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT m.display_name, m.points FROM member_identifier i JOIN member m ON m.id = i.member_id"
            " WHERE i.kind = 'card_no' AND i.value = '88000012'"
        ).one() == ("王小明", 1200)
        assert connection.exec_driver_sql("SELECT value FROM sync_state").scalar() == "7"
    upgraded.dispose()


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(DatabaseDirectoryMissing, match=r"does not exist; create it"):
        open_database(tmp_path / "nowhere" / "agent.db")


def test_read_only_disk_is_a_clear_error(read_only_dir):
    with pytest.raises(DatabaseNotWritable, match="not writable|cannot open"):
        open_database(read_only_dir / "agent.db")
    with pytest.raises(DatabaseNotWritable):
        open_database(read_only_dir / "new.db")


def test_database_from_newer_release_is_refused_untouched(engine, db_path):
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
        connection.exec_driver_sql("INSERT INTO sync_state VALUES ('k', 'v', '2026-01-01T00:00:00.000000+00:00')")
    engine.dispose()
    with pytest.raises(DatabaseFromNewerRelease, match="newer release"):
        open_database(db_path)
    check = sa.create_engine(f"sqlite:///{db_path}")
    with check.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "9999_future"
        assert connection.exec_driver_sql("SELECT value FROM sync_state WHERE key = 'k'").scalar() == "v"
    check.dispose()


def test_garbage_file_is_reported_as_damaged(db_path):
    db_path.write_bytes(b"this is not a database, it is a receipt" * 100)
    with pytest.raises(DatabaseCorrupt, match="restore it from a backup"):
        open_database(db_path)
