"""What stands between the network and the handlers: host and key checks, timeouts, connection limits.

- `GuardMiddleware` (pure ASGI, before routing): the `Host` header must name this server (loopback names,
  the bound address, or `ServeConfig.allowed_hosts`), against DNS rebinding; with an API key, every route
  but `/health` and the page at `/` needs `Authorization: Bearer KEY` or `X-API-Key: KEY` (compared in constant time);
  `POST /reload` needs `Content-Type: application/json` (a cross-origin page can send `text/plain` without
  a preflight, never JSON). Refusals are JSON errors like the handlers' own.
- `uvicorn_config`: idle keep-alive timeout, a limit on open connections (503 beyond), a bound on the
  size of request headers, and `HeaderTimeoutH11Protocol`, which closes a connection that has not sent a
  complete request head within `header_timeout_s` (a slow-loris client otherwise holds it for ever).
  The body has its own deadline in `realm.serve.app.parse`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from realm.serve.config import ServeConfig

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
# Reachable without the API key: the probe of a load balancer, and the page (static HTML holding no data: a
# browser cannot send a header when it opens a URL, so the page asks for the key and sends it with each call).
OPEN_PATHS = ("/health", "/")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name part of a Host header: `example.org:8000` -> `example.org`, `[::1]:80` -> `[::1]`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class GuardMiddleware:
    """Host allow-list, API key, and the JSON content type of `/reload` (see the module doc)."""

    def __init__(self, app: ASGIApp, config: ServeConfig, api_key: str | None) -> None:
        self.app = app
        self.config = config
        self.api_key = api_key.encode() if api_key else None
        allowed = {*LOOPBACK_NAMES, config.host.lower(), *(h.lower() for h in config.allowed_hosts)}
        # Bound to every address: any name may reach us legitimately unless an allow-list was given.
        wildcard = config.host in ("0.0.0.0", "::") and not config.allowed_hosts
        self.allowed_hosts = None if wildcard or "*" in allowed else allowed

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                await _refuse(send, 421, "host", "this server does not answer for that Host; add it with --allowed-host")
                return
        if self.api_key is not None and path not in OPEN_PATHS:
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self.api_key):
                await _refuse(
                    send, 401, "authorization", "missing or wrong API key: send Authorization: Bearer KEY",
                    extra=[(b"www-authenticate", b"Bearer")],
                )  # fmt: skip
                return
        if path == "/reload" and method == "POST":
            content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if content_type != "application/json":
                await _refuse(send, 415, "content-type", "POST /reload needs Content-Type: application/json")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, field: str, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message, "field": field, "status": status}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing connections that send no complete request head in time."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_deadline)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_deadline)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

        def _head_deadline(self) -> None:
            # No request under way: nothing came, or only part of a head (a complete one starts a cycle).
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                logger.info("closed a connection from %s: no complete request head in %.0f s",
                            self.client and self.client[0], header_timeout_s)  # fmt: skip
                self.transport.close()

    return HeaderTimeoutH11Protocol


def uvicorn_config(app: Any, config: ServeConfig, **kwargs: Any) -> Any:
    """The `uvicorn.Config` of `realm serve`: our timeouts and limits (kwargs override, e.g. in tests)."""
    import uvicorn

    settings: dict[str, Any] = dict(
        host=config.host, port=config.port, log_level=config.log_level, access_log=config.access_log,
        http=header_timeout_protocol(config.header_timeout_s), timeout_keep_alive=config.idle_timeout_s,
        limit_concurrency=config.max_connections, h11_max_incomplete_event_size=config.max_header_bytes,
        timeout_graceful_shutdown=5,
    )  # fmt: skip
    settings.update(kwargs)
    return uvicorn.Config(app, **settings)


def exposure_warning(config: ServeConfig, api_key: str | None) -> str | None:
    """A warning for a server reachable beyond this machine without an API key (None when it is not)."""
    if is_loopback(config.host) or api_key:
        return None
    return (
        f"serving on {config.host} without an API key: anyone who can reach this address can use the API"
        + (" and /reload" if config.allow_reload else "")
        + "; pass --api-key-file FILE, or bind 127.0.0.1"
    )
