"""Backends: where the request pipeline sends a request once its inbound policies have run.

A backend turns a :class:`~tlsgate.http.messages.Request` into a
:class:`~tlsgate.http.messages.Response`. Two kinds exist, chosen by the ``backend`` key of an
``[[api]]`` entry: ``echo:`` (built in, describes the request it got) and
``http://host:port/base`` (a reverse proxy with a keep-alive connection pool).

Failures the backend can still report as a response (unreachable, timeout) come back as
502/504 JSON errors; a failure after the response head went out can only abort the client
stream, so the response body iterator raises :class:`BackendError` then.
"""

from __future__ import annotations

import weakref
from typing import Protocol, runtime_checkable

from tlsgate.config.model import ApiSettings
from tlsgate.http.messages import Request, Response


class BackendError(Exception):
    """The backend failed while the response body was streaming: abort the client stream."""


@runtime_checkable
class Backend(Protocol):
    async def handle(self, request: Request) -> Response:
        """Forward ``request`` and return the response (body streamed when possible)."""

    async def aclose(self) -> None:
        """Release pooled resources; responses still streaming finish normally."""


# Backends made by make_backend, so shutdown can close them without the caller tracking them.
_open_backends: weakref.WeakSet[Backend] = weakref.WeakSet()


def make_backend(api: ApiSettings) -> Backend:
    """Build the backend an ``[[api]]`` entry names (``echo:`` or ``http://...``)."""
    # Imported here: the submodules import BackendError from this package.
    if api.backend.startswith("echo:"):
        from tlsgate.backends.echo import EchoBackend
        backend: Backend = EchoBackend()
    elif api.backend.startswith("http://"):
        from tlsgate.backends.http import HttpBackend
        backend = HttpBackend(api.backend, api.timeout, api_path=api.path)
    else:
        raise ValueError(f"api {api.name!r}: unsupported backend {api.backend!r} "
                         "(expected 'echo:' or 'http://host:port/path')")
    _open_backends.add(backend)
    return backend


async def close_all() -> None:
    """Close every backend made by :func:`make_backend` (gateway shutdown)."""
    backends = list(_open_backends)
    _open_backends.clear()
    for backend in backends:
        await backend.aclose()


__all__ = ["Backend", "BackendError", "close_all", "make_backend"]
