"""Routing: the ``[[api]]`` whose path prefix is the longest match wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tlsgate.config.model import ApiSettings


@dataclass(frozen=True)
class Route:
    api: ApiSettings
    backend: Any          # tlsgate.backends.Backend


class Router:
    def __init__(self, routes: list[Route]) -> None:
        # Longest prefix first; prefixes match whole path segments ("/echo" serves
        # "/echo" and "/echo/x", not "/echoes").
        self._routes = sorted(routes, key=lambda r: len(r.api.path), reverse=True)

    def route(self, path: str) -> Route | None:
        for route in self._routes:
            prefix = route.api.path
            if path.startswith(prefix) and (
                len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"
            ):
                return route
        return None
