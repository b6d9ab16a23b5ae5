"""Device capabilities (drivers/capabilities.py): the simulated scanner and printer have theirs, and no real
driver claims one it does not have — the API offers a scan box and receipt previews by these alone."""

from __future__ import annotations

import importlib

import pytest

from drivers.capabilities import HasPreviews, TakesScans
from drivers.urls import PRINTERS, SCANNERS


def driver(target: str) -> type:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("scheme", sorted(SCANNERS))
def test_only_the_simulated_scanner_takes_scans_over_the_api(scheme: str):
    scanner = driver(SCANNERS[scheme])
    assert issubclass(scanner, TakesScans) is (scheme == "sim"), scanner
    assert not issubclass(scanner, HasPreviews), scanner


@pytest.mark.parametrize("scheme", sorted(PRINTERS))
def test_only_the_simulated_printer_draws_previews(scheme: str):
    printer = driver(PRINTERS[scheme])
    assert issubclass(printer, HasPreviews) is (scheme == "sim"), printer
    assert not issubclass(printer, TakesScans), printer
