"""The schema is the migrations' business; the models must describe exactly what they build."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from central.db import DatabaseError, head_revision, migrate, open_database, schema_revision
from central.models import CentralModel


def test_models_match_the_migrated_schema(central_database_url):
    engine = open_database(central_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, CentralModel.metadata)
        assert differences == []
        assert schema_revision(engine) == head_revision()
        migrate(engine)  # again: nothing to do
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT value FROM feed_counter WHERE id = 1").scalar_one() == 0
    finally:
        engine.dispose()


def test_a_database_from_a_newer_release_is_refused(central_database_url):
    engine = open_database(central_database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(DatabaseError, match="newer release"):
            migrate(engine)
    finally:
        engine.dispose()


def test_a_sqlite_file_in_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_database(f"sqlite:///{tmp_path / 'nowhere' / 'central.db'}")


def test_a_new_sqlite_file_is_private(tmp_path):
    open_database(f"sqlite:///{tmp_path / 'central.db'}").dispose()
    assert (tmp_path / "central.db").stat().st_mode & 0o777 == 0o600
