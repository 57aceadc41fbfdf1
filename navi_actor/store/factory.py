"""Open the session store: the default one in the data folder, or the one a URL names.

Only SQLite is supported: ``sqlite:///PATH`` names the database file by its
absolute path (percent-escapes decoded); without a URL, the store is
``DATA_DIR/navi.sqlite3``. Any other URL is refused with a `StoreError` that
says what is supported, so a backend added later plugs in here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from navi_actor.store.errors import StoreError
from navi_actor.store.interface import SessionStore
from navi_actor.store.sqlite import DB_FILENAME, open_sqlite

__all__ = ["open_store", "sqlite_path"]


def sqlite_path(url: str) -> Path:
    """The database file a ``sqlite:///PATH`` URL names; StoreError for any other URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise StoreError(f"unsupported store URL {url!r}: this version supports sqlite:///PATH only")
    if not rest.startswith("/") or "?" in rest or "#" in rest:
        raise StoreError(f"store URL {url!r} must be sqlite:///PATH, with PATH the database file's "
                         "absolute path (no host, no query)")
    path = Path(unquote(rest))
    if path.name in ("", ".", ".."):
        raise StoreError(f"store URL {url!r} names a folder; name the database file (…/{DB_FILENAME})")
    return path


def open_store(data_dir: str | Path, url: str | None = None) -> SessionStore:
    """Open the store ``url`` names, or ``data_dir/navi.sqlite3`` without one.

    The database's folder is created with mode 0o700 if new (``data_dir``
    itself, by default), and its file is private (mode 0o600).
    """
    path = sqlite_path(url) if url else Path(data_dir) / DB_FILENAME
    return open_sqlite(path)
