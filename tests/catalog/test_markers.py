"""Markers: an upstream job's "done", for ``marker`` prerequisites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from strongroom.catalog import Catalog, Marker

T = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)


def test_a_marker_is_read_back(catalog: Catalog) -> None:
    assert catalog.get_marker("dracula", "sql-dump") is None
    catalog.set_marker(Marker("dracula", "sql-dump", T))
    assert catalog.get_marker("dracula", "sql-dump") == Marker("dracula", "sql-dump", T)


def test_the_last_mark_wins(catalog: Catalog) -> None:
    catalog.set_marker(Marker("dracula", "sql-dump", T, note="ok"))
    later = Marker("dracula", "sql-dump", T + timedelta(hours=1), failed=True, note="disk full")
    catalog.set_marker(later)
    assert catalog.get_marker("dracula", "sql-dump") == later
    catalog.set_marker(Marker("dracula", "sql-dump", T + timedelta(hours=2)))
    got = catalog.get_marker("dracula", "sql-dump")
    assert got is not None and not got.failed and got.note is None


def test_markers_are_per_client_and_name(catalog: Catalog) -> None:
    catalog.set_marker(Marker("dracula", "sql-dump", T))
    catalog.set_marker(Marker("mina", "sql-dump", T + timedelta(minutes=1), failed=True))
    catalog.set_marker(Marker("dracula", "ldap-export", T + timedelta(minutes=2)))
    dracula = catalog.get_marker("dracula", "sql-dump")
    mina = catalog.get_marker("mina", "sql-dump")
    assert dracula is not None and dracula.time == T and not dracula.failed
    assert mina is not None and mina.failed
    assert catalog.get_marker("mina", "ldap-export") is None
