"""The middleware of ``sefmodel serve`` (:func:`sefmodel.serve.app.create_app`), each piece a pure ASGI class or a plain
function that works on any Starlette/FastAPI app:

* :class:`RequestGuard`: a request under another Host name (DNS rebinding; :func:`host_allowed`, for a loopback
  server) gets 400, a POST from another page (:func:`same_origin`) 403, before a byte of the body is read.
* :class:`AdmissionLimit`: the busy limit; past N requests in flight, 503 ``busy`` at once.
* :class:`SecurityHeaders`: nosniff, a content security policy and no referrer on every answer.
* :func:`exception_handlers`: the framework's errors (404, 405, 422) as ``{"error": "one line"}``.

Importable without the web extras (:class:`sefmodel.serve.app.ServeConfig` takes the loopback rule from here); Starlette
is imported where a response is built.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_HOST_HEADER = re.compile(r"(?P<name>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one shape of every refusal and error the server answers: ``{"error": "one line"}``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---- the Host and Origin checks -----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether a listening address answers this machine only (a loopback name or address)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(name: str) -> str:
    """A host name or IP address in one spelling: lower case, IPv6 without brackets and compressed."""
    name = name.strip("[]").lower()
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name).compressed
    return name


def host_allowed(host: str | None, server: tuple[str, int | None] | None) -> bool:
    """Whether a request's ``Host`` header names this loopback server: the address it is bound to (``server``, the
    ASGI scope's local address) or a loopback name (localhost, 127.0.0.1, [::1]), with the port it listens on. A page
    under any other name, one that rebinds its DNS name to this machine, is refused."""
    match = _HOST_HEADER.fullmatch(host or "")
    if match is None or server is None:
        return False
    bound, port = server
    names = {_address(n) for n in (*LOOPBACK_HOSTS, bound)}
    return _address(match["name"]) in names and int(match["port"] or 80) == port


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether a request's ``Origin`` header, when it has one, is this server's own origin (``scheme://Host``).
    Browsers send it with every cross-origin POST, so a form on another page that posts here is refused; a request
    without one (curl, scripts) is no browser's and stays accepted."""
    if origin is None:
        return True
    default = {"http": ":80", "https": ":443"}.get(scheme)
    own = f"{scheme}://{(host or '').removesuffix(default) if default else host}"
    return origin.lower() == own.lower()


class RequestGuard:
    """ASGI middleware that refuses, with a one-line JSON error, a request under another Host name (400; only with
    ``check_host``, for a loopback server: :func:`host_allowed`) and a POST from another page (403:
    :func:`same_origin`), before the app reads a byte of its body."""

    def __init__(self, app: Callable, check_host: bool = True) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await error_response(*refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> tuple[int, str] | None:
        """``(status, message)`` when the request in ``scope`` is refused, else None."""
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        host, origin = headers.get("host"), headers.get("origin")
        if self.check_host and not host_allowed(host, scope.get("server")):
            return 400, f"invalid Host header {host!r}: this server answers only under its own address"
        if scope["method"] not in ("GET", "HEAD") and not same_origin(origin, scope.get("scheme", "http"), host):
            return 403, f"cross-origin request refused: Origin {origin!r} is not this server's"
        return None


# ---- the busy limit -----------------------------------------------------------------------------------------------


class AdmissionLimit:
    """ASGI middleware that admits at most ``limit`` requests to ``routes`` (``(method, path)`` pairs) at once; one
    more is answered 503 ``busy`` at once. Its body is read and dropped first, up to ``drain_bytes`` (the client then
    reads the answer rather than a connection reset), never held. Other routes pass uncounted."""

    def __init__(self, app: Callable, limit: int, routes: Collection[tuple[str, str]], drain_bytes: int) -> None:
        self.app = app
        self.limit = limit
        self.routes = frozenset(routes)
        self.drain_bytes = drain_bytes
        self.admitted = 0  # touched only on the event loop's thread

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.routes:
            await self.app(scope, receive, send)
            return
        if self.admitted >= self.limit:
            await self._drain(scope, receive)
            message = f"busy: {self.limit} requests are being scored or waiting; try again shortly"
            await error_response(503, message, {"Retry-After": "1"})(scope, receive, send)
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1

    async def _drain(self, scope: dict, receive: Callable) -> None:
        from starlette.requests import Request

        drained = 0
        async for chunk in Request(scope, receive).stream():
            drained += len(chunk)
            if drained > self.drain_bytes:
                break


# ---- headers and errors -------------------------------------------------------------------------------------------


class SecurityHeaders:
    """ASGI middleware that sets :data:`SECURITY_HEADERS` on every HTTP answer (outermost, so that the other
    middleware's refusals carry them too)."""

    def __init__(self, app: Callable, headers: Mapping[str, str] = SECURITY_HEADERS) -> None:
        self.app = app
        self.headers = dict(headers)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                from starlette.datastructures import MutableHeaders

                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    """A Starlette ``HTTPException`` (no such route, wrong method, ...) as a one-line JSON error, with the headers it
    carries (a 405's ``Allow``: the methods the path does answer, as HTTP requires)."""
    return error_response(e.status_code, str(e.detail), headers=e.headers)


async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """A FastAPI ``RequestValidationError`` as one line: the messages of its errors."""
    return error_response(422, "; ".join(str(x.get("msg", x)) for x in e.errors()) or "invalid request")


def exception_handlers() -> dict[type[Exception], Callable]:
    """The handlers for ``FastAPI(exception_handlers=...)``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    return {HTTPException: http_error, RequestValidationError: validation_error}


__all__ = [
    "LOOPBACK_HOSTS",
    "SECURITY_HEADERS",
    "AdmissionLimit",
    "RequestGuard",
    "SecurityHeaders",
    "error_response",
    "exception_handlers",
    "host_allowed",
    "is_loopback",
    "same_origin",
]
