"""Fuzzing the settings loader: any file gives either settings or a SettingsError whose every line names a key
(or says the file is not TOML / not UTF-8), never a traceback that stops the agent with no hint of the fix.

Documents are the shipped example with one key set to an arbitrary TOML value, or removed, or an unknown key
added; and arbitrary text. Written with tomli-w, read back by the loader as a store's file would be.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
import typing
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.settings import ENV_PREFIX, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = tomllib.loads((ROOT / "config" / "example.toml").read_text(encoding="utf-8"))
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# What a settings error says when it cannot name a key: the file as a whole is unreadable.
WHOLE_FILE = ("not valid TOML", "not UTF-8", "file not found", "cannot read")


@pytest.fixture(autouse=True, scope="module")
def no_environment_overrides() -> Iterator[None]:
    """The documents alone decide: a POS_EDGE_* variable in the test's environment would override them."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith(ENV_PREFIX)}
    yield
    os.environ.update(saved)


def key_paths(model: type[BaseModel] = Settings, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key the settings know, as a path into the document (list items at [0], tiers under "gold")."""
    paths = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        annotation = field.annotation
        for candidate, step in _nested(annotation):
            paths += key_paths(candidate, (*path, *step))
    return paths


def _nested(annotation: Any) -> list[tuple[type[BaseModel], tuple[Any, ...]]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, ())]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    found = []
    for arg in args:
        for model, step in _nested(arg):
            if origin is tuple:
                step = (0, *step)
            elif origin is dict:
                step = ("gold", *step)
            found.append((model, step))
    return found


KEY_PATHS = key_paths()
# The tables a key can be added to: the document itself and every settings section (one tier, one scanner).
TABLE_PATHS = [
    (),
    *sorted(
        {path[: i + 1] for path in KEY_PATHS for i in range(len(path) - 1) if path[i + 1] != 0} - {("points", "tiers")},
        key=str,
    ),
]


def dotted(path: tuple[Any, ...]) -> str:
    """A path as the loader names it: devices.scanners[0].url."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


# TOML's values: strings with any character TOML can carry, integers past 64 bits, nan and inf, dates and times.
toml_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
scalar = st.one_of(
    toml_text,
    st.sampled_from(
        ["", " ", "UTC", "Asia/Shanghai", "America", "sim://x", "serial:///dev/ttyS0", "http://h", "/tmp/a.db"]
    ),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=8))])),
    st.datetimes(),
    st.dates(),
    st.times(),
)
value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(toml_text, inner, max_size=4), max_leaves=8
)
# Keys that are not settings, including names pydantic and Python give meaning to.
unknown_key = st.one_of(
    toml_text.filter(lambda key: key not in Settings.model_fields),
    st.sampled_from(
        ["_case_sensitive", "_env_prefix", "_secrets_dir", "_env_nested_delimiter", "model_config", "__class__", "self"]
    ),
)


def put(document: dict, path: tuple[Any, ...], new: Any) -> None:
    """Set `path` in the document, making the tables and arrays of tables it runs through."""
    node: Any = document
    for step, following in zip(path[:-1], path[1:], strict=True):
        if isinstance(step, int):
            if not isinstance(node, list) or not node or not isinstance(node[0], dict):
                return  # the path runs through something that is no longer a table: nothing to set
            node = node[0]
            continue
        child = node.get(step)
        if not isinstance(child, dict | list):
            child = [{}] if isinstance(following, int) else {}
            node[step] = child
        node = child
    if isinstance(node, dict):
        node[path[-1]] = new


def remove(document: dict, path: tuple[Any, ...]) -> None:
    node: Any = document
    for step in path[:-1]:
        node = (
            node[0]
            if isinstance(step, int) and isinstance(node, list) and node
            else node.get(step)
            if isinstance(node, dict)
            else None
        )
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def load(text: str | bytes, mode: int = 0o600) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "agent.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        path.chmod(mode)
        return load_settings(path)


def check(text: str | bytes, names: set[str], mode: int = 0o600) -> None:
    """The loader's answer is settings, or problems that each name a key of the document or of the settings."""
    try:
        loaded = load(text, mode)
    except SettingsError as exc:
        assert exc.problems, "a SettingsError must say what is wrong"
        for problem in exc.problems:
            assert isinstance(problem, str)
            if problem.startswith(WHOLE_FILE):
                continue
            key = problem.split(": ", 1)[0]
            assert re.split(r"[.\[]", key, maxsplit=1)[0] in names, f"{problem!r} names no key"
    else:
        assert isinstance(loaded.settings, Settings)
        for warning in loaded.warnings:
            assert re.match(r"(central|api|privacy)\.\w+ is written in a file anyone", warning)


@FAST
@given(st.sampled_from(KEY_PATHS), value, st.sampled_from([0o600, 0o644]))
@example(("store", "timezone"), "America", 0o600)  # a folder of the zone database: IsADirectoryError
@example(("store", "timezone"), "a" * 300, 0o600)  # longer than a file name may be: OSError
@example(("storage", "database"), "agent\x00.db", 0o600)  # a NUL in a path: ValueError
@example(("codes", "card_patterns"), ["8800[0-9]{4294967295}"], 0o600)  # re's OverflowError
@example(("central", "token"), "s3cret-token", 0o644)  # a warning, not an error
def test_any_value_at_any_key_gives_settings_or_an_error_naming_a_key(path, new, mode):
    document = {**EXAMPLE}
    document = tomllib.loads(tomli_w.dumps(document))  # a deep copy
    put(document, path, new)
    check(tomli_w.dumps(document), set(Settings.model_fields) | set(document), mode)


@FAST
@given(st.sampled_from(KEY_PATHS))
def test_a_removed_key_gives_settings_or_names_what_is_missing(path):
    document = tomllib.loads(tomli_w.dumps(EXAMPLE))
    remove(document, path)
    check(tomli_w.dumps(document), set(Settings.model_fields) | set(document))


@FAST
@given(st.sampled_from(TABLE_PATHS), unknown_key, value)
@example((), "_env_prefix", "ATTACKER_")  # pydantic-settings' own init arguments must not pass as settings
@example((), "_case_sensitive", True)
@example((), "_secrets_dir", 5)
def test_an_unknown_key_is_refused_by_name(where, key, new):
    document = tomllib.loads(tomli_w.dumps(EXAMPLE))
    put(document, (*where, key), new)
    parent: Any = document
    for step in (step for step in where if not isinstance(step, int)):  # an array of tables: its first
        parent = parent.get(step) if isinstance(parent, dict) else None
        parent = parent[0] if isinstance(parent, list) and parent else parent
    if not isinstance(parent, dict) or parent.get(key) is not new:
        return  # the key's table is a value now (a known key set to a table): covered above
    with pytest.raises(SettingsError) as refused:
        load(tomli_w.dumps(document))
    named = dotted((*where, key))
    assert any(problem.startswith(f"{named}: unknown key") for problem in refused.value.problems), (
        refused.value.problems
    )


@FAST
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
@example(b"[store]\nid = 1\n\xff")
@example("a = 1\na = 2\n")
def test_any_file_gives_settings_or_a_settings_error(text):
    check(text, set(Settings.model_fields))


# Environment variables override the file; lists and tables there are JSON, which a person may get wrong.
ENV_NAMES = [
    ENV_PREFIX + "__".join(str(step).upper() for step in path)
    for path in KEY_PATHS
    if not any(isinstance(step, int) for step in path)
]


@FAST
@given(
    st.sampled_from(ENV_NAMES),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
)
@example("POS_EDGE_DEVICES", "{")  # not JSON: pydantic-settings' own SettingsError escaped as a traceback
@example("POS_EDGE_CODES__CARD_PATTERNS", "16[0-9]{16}")
@example("POS_EDGE_POINTS__TIERS", "[1")
def test_any_environment_value_gives_settings_or_an_error_naming_a_key(name, text):
    os.environ[name] = text
    try:
        check(tomli_w.dumps(EXAMPLE), set(Settings.model_fields))
    finally:
        del os.environ[name]
