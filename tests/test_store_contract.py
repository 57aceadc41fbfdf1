"""The store contract (`tests/store_contract.py`) against SQLite, on a real file in a temporary folder."""

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

