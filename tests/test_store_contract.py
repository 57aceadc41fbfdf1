"""The store contract (`tests/store_contract.py`) against SQLite (a real file in a temporary folder) and PostgreSQL (a real server)."""

from __future__ import annotations

import pytest

from navi_actor.store import SQLiteStore, open_store
from tests.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def backend(self, tmp_path):
        opened: list[SQLiteStore] = []

        def open_one() -> SQLiteStore:
            store = open_store(tmp_path / "data")
            opened.append(store)
            return store

        yield open_one
        for store in opened:
            store.close()



class TestPostgresStore(StoreContract):
    """The same contract against a real PostgreSQL (tests/pgserver.py), one fresh database per test."""

    @pytest.fixture
    def backend(self, pg_url):
        opened = []

        def open_one():
            store = open_store("/nonexistent-data-dir", pg_url)
            opened.append(store)
            return store

        yield open_one
        for store in opened:
            store.close()
