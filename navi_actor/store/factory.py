"""Open the session store: the default one in the data folder, or the one a URL names.

- ``sqlite:///PATH`` names an SQLite database file by its absolute path
  (percent-escapes decoded); without a URL, the store is
  ``DATA_DIR/navi.sqlite3``.
- ``postgresql://USER@HOST:PORT/DB`` (or ``postgres://``) names a PostgreSQL
  database (`navi_actor.store.postgres`; psycopg is imported only then).

Any other URL is refused with a `StoreError` that says what is supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from navi_actor.store.errors import StoreError
from navi_actor.store.interface import SessionStore
from navi_actor.store.sqlite import DB_FILENAME, open_sqlite

__all__ = ["open_store", "open_cluster", "sqlite_path", "store_kind", "SUPPORTED"]

#: What ``--store`` accepts, as errors say it.
SUPPORTED = "sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def store_kind(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``: the backend a store URL names; StoreError for any other URL."""
    scheme, sep, _rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        return "sqlite"
    if sep and scheme in _POSTGRES_SCHEMES:
        return "postgresql"
    raise StoreError(f"unsupported store URL {url!r}: use {SUPPORTED}")


def sqlite_path(url: str) -> Path:
    """The database file a ``sqlite:///PATH`` URL names; StoreError for any other URL."""
    if store_kind(url) != "sqlite":
        raise StoreError(f"store URL {url!r} is not an SQLite one (sqlite:///PATH)")
    rest = url.partition("://")[2]
    if not rest.startswith("/") or "?" in rest or "#" in rest:
        raise StoreError(f"store URL {url!r} must be sqlite:///PATH, with PATH the database file's "
                         "absolute path (no host, no query)")
    path = Path(unquote(rest))
    if path.name in ("", ".", ".."):
        raise StoreError(f"store URL {url!r} names a folder; name the database file (…/{DB_FILENAME})")
    return path


def _need_psycopg() -> None:
    """StoreError saying how to install psycopg, if it is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise StoreError(f"a postgresql:// store needs psycopg 3, which is not installed ({exc}): "
                         "pip install 'navi-actor[postgres]'") from None


def open_store(data_dir: str | Path, url: str | None = None, *, node_id: str | None = None) -> SessionStore:
    """Open the store ``url`` names, or ``data_dir/navi.sqlite3`` without one.

    SQLite: the database's folder is created with mode 0o700 if new
    (``data_dir`` itself, by default), and its file is private (mode 0o600).
    PostgreSQL: the schema is created or migrated; `StoreFailure` if the
    database cannot be reached. ``node_id`` names this node among those
    sharing the database (SQLite has one node: it is ignored).
    """
    if url and store_kind(url) == "postgresql":
        _need_psycopg()
        from navi_actor.store.postgres import open_postgres

        return open_postgres(url, node_id)
    path = sqlite_path(url) if url else Path(data_dir) / DB_FILENAME
    return open_sqlite(path)


def open_cluster(url: str | None, node_id: str, *, lease_ttl: float, advertise_url: str = "",
                 on_lost: Callable[[str], None], on_control: Callable[[dict[str, Any]], str],
                 on_swept: Callable[[list[str]], None] = lambda sessions: None) -> Any:
    """This node's membership of the cluster sharing the store ``url`` names, not yet started; None for SQLite.

    A `navi_actor.store.pgcluster.PgNode`: ``start()``, ``request(session_id,
    op)``, ``running()``, ``close()``. ``on_lost(reason)`` is called (from its
    thread) when this node could not renew its lease for a whole TTL;
    ``on_control(request)`` runs a stop or kill another node asked for and
    returns its outcome; ``on_swept(session_ids)`` is called (from its thread)
    after this node's sweeper ended a dead node's turns of those sessions.
    """
    if not url or store_kind(url) != "postgresql":
        return None
    _need_psycopg()
    from navi_actor.store.pgcluster import PgNode

    return PgNode(url, node_id, advertise_url=advertise_url, lease_ttl=lease_ttl,
                  on_lost=on_lost, on_control=on_control, on_swept=on_swept)
