"""The session store: sessions, their turns ("runs") and messages, kept durably.

- `interface` — `SessionStore`, the contract the front relies on (a Protocol);
- `errors` — what a caller catches, whichever backend is behind it;
- `common` — statuses, session ids, titles: what every backend shares;
- `sqlite` — `SQLiteStore`, the backend (one file in the data folder);
- `factory` — `open_store`, which picks the backend.

Every name the rest of the code imports is re-exported here: import from
``navi_actor.store``, not from its modules.
"""

from __future__ import annotations

from navi_actor.store.common import (
    ANY_OWNER, FINAL_STATUSES, RUN_STATUSES, SESSION_ID_RE, TITLE_MAX, valid_session_id,
)
from navi_actor.store.errors import QueueFull, RunNotRunning, SessionNotFound, StoreError, StoreFailure
from navi_actor.store.factory import open_store
from navi_actor.store.interface import SessionStore
from navi_actor.store.sqlite import DB_FILENAME, SCHEMA_VERSION, SQLiteStore

__all__ = [
    "RUN_STATUSES", "FINAL_STATUSES", "SCHEMA_VERSION", "SESSION_ID_RE", "TITLE_MAX", "DB_FILENAME",
    "StoreError", "StoreFailure", "SessionNotFound", "RunNotRunning", "QueueFull", "ANY_OWNER",
    "SessionStore", "SQLiteStore", "open_store", "valid_session_id",
]
