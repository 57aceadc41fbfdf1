"""How every method of the PostgreSQL store is called: under its lock, on a live connection.

Shared by `navi_actor.store.postgres` and its queue mixin (`pg_queue`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar, cast

import psycopg

from navi_actor.store.errors import StoreFailure

__all__ = ["locked", "failure_of", "reason"]

_F = TypeVar("_F", bound=Callable[..., Any])


def locked(fn: _F) -> _F:
    """Run the method under the store's lock, on a live connection; refuse if the store is closed.

    psycopg's errors leave as `StoreFailure`, naming the method.
    """
    op = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                self._ensure_connected()
                return fn(self, *args, **kwargs)
            except psycopg.Error as exc:
                raise failure_of(op, exc) from exc
    return cast(_F, wrapper)


def failure_of(op: str, exc: psycopg.Error) -> StoreFailure:
    """psycopg's error as a StoreFailure; ``unavailable`` for the connection-level ones (server down)."""
    return StoreFailure(op, reason(exc), unavailable=isinstance(exc, (psycopg.OperationalError,
                                                                        psycopg.InterfaceError)))


def reason(exc: BaseException) -> str:
    """The driver's words for a failure, on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
