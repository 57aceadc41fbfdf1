"""The session store: sessions, their turns ("runs") and messages, kept durably.

- `interface` — `SessionStore`, the contract the front relies on (a Protocol);
- `errors` — what a caller catches, whichever backend is behind it;
- `common` — statuses, session ids, titles: what every backend shares;
- `sqlite` — `SQLiteStore`, the embedded backend (one file in the data folder);
- `postgres` — `PostgresStore`, the PostgreSQL backend (psycopg 3; imported
  only when a ``postgresql://`` URL is opened, so psycopg stays optional);
- `factory` — `open_store`, which picks the backend from the URL.

Every name the rest of the code imports is re-exported here: import from
``navi_actor.store``, not from its modules.
"""

from __future__ import annotations

from navi_actor.store.common import (
    ANY_OWNER, FINAL_STATUSES, RUN_STATUSES, SESSION_ID_RE, TITLE_MAX, redact, valid_session_id,
)
from navi_actor.store.errors import (
    LeaseLost, QueueFull, RunNotRunning, SessionBusy, SessionNotFound, StoreError, StoreFailure,
)
from navi_actor.store.factory import open_cluster, open_store
from navi_actor.store.interface import SessionStore
from navi_actor.store.sqlite import DB_FILENAME, SCHEMA_VERSION, SQLiteStore

__all__ = [
    "RUN_STATUSES", "FINAL_STATUSES", "SCHEMA_VERSION", "SESSION_ID_RE", "TITLE_MAX", "DB_FILENAME",
    "StoreError", "StoreFailure", "SessionNotFound", "RunNotRunning", "QueueFull", "SessionBusy", "LeaseLost",
    "ANY_OWNER", "SessionStore", "SQLiteStore", "open_store", "open_cluster", "valid_session_id", "redact",
]
