"""The pieces of sefmodel serve one at a time, on bare apps without a detector: the Host/Origin guard, the busy limit,
the security headers and the error handlers (sefmodel.serve.middleware), the upload parsing and the page, API and
report routers (sefmodel.serve.routes). Requests are ASGI calls made here (no sockets); tests/test_serve.py runs the
assembled app over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import urllib3
from conftest import photo_like
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.responses import PlainTextResponse

from sefmodel.serve.app import ServeConfig
from sefmodel.serve.middleware import (
    SECURITY_HEADERS,
    AdmissionLimit,
    RequestGuard,
    SecurityHeaders,
    exception_handlers,
)
from sefmodel.serve.routes import api_router, page_router, read_uploads, report_router

SERVER = ("127.0.0.1", 7860)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks_read: int = 0  # request body chunks the app received
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def json(self) -> dict:
        return json.loads(self.body)


async def call(app: Callable, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
               chunks: list[bytes] | None = None, server: tuple[str, int] = SERVER) -> Answer:  # fmt: skip
    """One HTTP request to an ASGI app, its body sent in ``chunks``; the Host header names ``server`` unless given."""
    headers = {"host": f"{server[0]}:{server[1]}", **{k.lower(): v for k, v in (headers or {}).items()}}
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "server": server, "client": ("127.0.0.1", 50000), "state": {},
    }  # fmt: skip
    pending, done = list(chunks or [b""]), asyncio.Event()
    answer = Answer(0, {}, b"")

    async def receive() -> dict:
        if pending:
            answer.chunks_read += 1
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
        await done.wait()  # as a server does: the client is there until the answer is sent
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.raw_headers = list(message.get("headers", []))
            answer.headers = {k.decode().lower(): v.decode() for k, v in answer.raw_headers}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body"):
                done.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return answer


def request(app: Callable, *args, **kwargs) -> Answer:
    return asyncio.run(call(app, *args, **kwargs))


def multipart(items: list[tuple[str, str, bytes]], **fields: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of a multipart form: ``(field, filename, bytes)`` files and plain fields."""
    body, content_type = urllib3.encode_multipart_formdata(
        [*((name, (filename, data)) for name, filename, data in items), *fields.items()]
    )
    return {"content-type": content_type, "content-length": str(len(body))}, body


def bare_app(**kwargs) -> FastAPI:
    """A FastAPI app with the server's error handlers and a GET and a POST that answer "ok"."""
    app = FastAPI(exception_handlers=exception_handlers(), **kwargs)
    app.state.calls = 0

    @app.api_route("/", methods=["GET", "POST"])
    async def ok(request: Request) -> PlainTextResponse:
        app.state.calls += 1
        await request.body()
        return PlainTextResponse("ok")

    return app


# ---- the Host and Origin guard ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "localhost:7860", "[::1]:7860"])
def test_the_guard_lets_through_the_loopback_names_with_the_port(host):
    app = bare_app()
    answer = request(RequestGuard(app), headers={"Host": host})
    assert answer.status == 200 and answer.body == b"ok" and app.state.calls == 1


@pytest.mark.parametrize("host", ["attacker.example:7860", "127.0.0.1:7861", "127.0.0.1"])
def test_the_guard_refuses_a_foreign_host_before_the_app_sees_it(host):
    app = bare_app()
    answer = request(RequestGuard(app), "POST", headers={"Host": host}, chunks=[b"x" * 10, b"y"])
    assert answer.status == 400 and answer.json() == {
        "error": f"invalid Host header {host!r}: this server answers only under its own address"
    }
    assert app.state.calls == 0 and answer.chunks_read == 0


def test_the_guard_refuses_a_cross_origin_post_unread_and_lets_gets_and_own_posts_through():
    app = bare_app()
    guard = RequestGuard(app)
    answer = request(guard, "POST", headers={"Origin": "http://attacker.example"}, chunks=[b"x"])
    assert (
        answer.status == 403
        and answer.chunks_read == 0
        and answer.json()
        == {"error": "cross-origin request refused: Origin 'http://attacker.example' is not this server's"}
    )
    assert request(guard, "GET", headers={"Origin": "http://attacker.example"}).status == 200
    assert request(guard, "POST", headers={"Origin": "http://127.0.0.1:7860"}).status == 200
    assert request(guard, "POST").status == 200  # no Origin: curl, scripts
    assert app.state.calls == 3


def test_a_server_open_to_the_network_checks_the_origin_but_not_the_host():
    app = bare_app()
    guard = RequestGuard(app, check_host=ServeConfig(host="0.0.0.0").loopback)
    assert request(guard, headers={"Host": "detector.example.org"}).status == 200
    own = {"Host": "detector.example.org", "Origin": "http://detector.example.org"}
    assert request(guard, "POST", headers=own).status == 200
    answer = request(guard, "POST", headers={"Host": "detector.example.org", "Origin": "http://attacker.example"})
    assert answer.status == 403


# ---- the busy limit -----------------------------------------------------------------------------------------------


def slow_app() -> tuple[FastAPI, asyncio.Event]:
    """POST /slow waits for the event (create it inside the running loop); GET /fast answers at once."""
    app = FastAPI(exception_handlers=exception_handlers())
    app.state.release = None
    app.state.inside = 0

    @app.post("/slow")
    async def slow(request: Request) -> PlainTextResponse:
        await request.body()
        app.state.inside += 1
        await app.state.release.wait()
        return PlainTextResponse("done")

    @app.post("/fail")
    async def fail() -> PlainTextResponse:
        raise RuntimeError("boom")

    @app.get("/fast")
    async def fast() -> PlainTextResponse:
        return PlainTextResponse("fast")

    return app


def test_the_busy_limit_answers_503_at_once_past_the_limit_and_frees_its_slots():
    app = slow_app()
    limit = AdmissionLimit(app, limit=2, routes=[("POST", "/slow")], drain_bytes=100)

    async def scenario() -> None:
        app.state.release = asyncio.Event()
        first = [asyncio.create_task(call(limit, "POST", "/slow")) for _ in range(2)]
        while app.state.inside < 2:
            await asyncio.sleep(0.001)
        assert limit.admitted == 2
        busy = await call(limit, "POST", "/slow", chunks=[b"a" * 30, b"b" * 30])
        assert (
            busy.status == 503
            and busy.headers["retry-after"] == "1"
            and busy.json() == {"error": "busy: 2 requests are being scored or waiting; try again shortly"}
        )
        assert busy.chunks_read == 2  # the body was read (and dropped), so the client reads the answer
        assert (await call(limit, "GET", "/fast")).body == b"fast"  # other routes are not counted
        app.state.release.set()
        assert [a.body for a in await asyncio.gather(*first)] == [b"done", b"done"]
        assert limit.admitted == 0
        app.state.release = asyncio.Event()
        app.state.release.set()
        assert (await call(limit, "POST", "/slow")).status == 200

    asyncio.run(scenario())


def test_the_busy_limit_stops_draining_past_its_bytes_and_a_failed_request_frees_its_slot():
    app = slow_app()
    limit = AdmissionLimit(app, limit=1, routes=[("POST", "/slow"), ("POST", "/fail")], drain_bytes=100)

    async def scenario() -> None:
        app.state.release = asyncio.Event()
        held = asyncio.create_task(call(limit, "POST", "/slow"))
        while app.state.inside < 1:
            await asyncio.sleep(0.001)
        busy = await call(limit, "POST", "/slow", chunks=[b"x" * 60] * 10)
        assert busy.status == 503 and busy.chunks_read == 2  # 120 bytes > 100: the rest is left unread
        app.state.release.set()
        await held
        with pytest.raises(RuntimeError, match="boom"):
            await call(limit, "POST", "/fail")
        assert limit.admitted == 0

    asyncio.run(scenario())


# ---- headers and errors -------------------------------------------------------------------------------------------


def test_the_security_headers_go_on_every_answer_once():
    app = FastAPI(exception_handlers=exception_handlers())

    @app.get("/own")
    async def own() -> PlainTextResponse:
        return PlainTextResponse("x", headers={"X-Content-Type-Options": "something else"})

    wrapped = SecurityHeaders(RequestGuard(app))
    for answer in (request(wrapped, path="/own"), request(wrapped, headers={"Host": "attacker.example"})):
        for name, value in SECURITY_HEADERS.items():
            assert [v for k, v in answer.raw_headers if k.decode().lower() == name.lower()] == [value.encode()]
    assert request(wrapped, headers={"Host": "attacker.example"}).status == 400


def test_the_error_handlers_answer_one_json_line():
    app = bare_app()

    @app.get("/number")
    async def number(n: int) -> dict:
        return {"n": n}

    assert (request(app, path="/nothing").status, request(app, path="/nothing").json()) == (404, {"error": "Not Found"})
    answer = request(app, "PUT")
    assert answer.status == 405 and answer.json() == {"error": "Method Not Allowed"}
    allowed = {m.strip() for m in answer.headers["allow"].split(",")}  # RFC 9110: a 405 names the methods it answers
    assert {"GET", "POST"} <= allowed and "PUT" not in allowed
    answer = request(app, path="/number")
    assert answer.status == 422 and answer.json() == {"error": "Field required"}


# ---- upload parsing -----------------------------------------------------------------------------------------------


def upload_app(max_upload_mb: float = 1, max_files: int = 3) -> FastAPI:
    """POST / answers what read_uploads made of the request, and whether its files were closed after the block."""
    app = FastAPI(exception_handlers=exception_handlers())
    app.state.files = []

    @app.post("/")
    async def echo(request: Request) -> JSONResponse:
        async with read_uploads(request, max_upload_mb, max_files) as uploads:
            app.state.files = [f for _, f in uploads.files]
            contents = [f.read().decode() for _, f in uploads.files]
            return JSONResponse({"names": [n for n, _ in uploads.files], "contents": contents,
                                 "heatmaps": uploads.heatmaps})  # fmt: skip

    return app


def test_uploads_keep_their_order_and_lose_folders_and_control_characters():
    app = upload_app()
    files = [("files", "a/b/one.png", b"1"), ("files", "C:\\x\\two\x07.png", b"2"), ("files", "/", b"3")]
    headers, body = multipart(files, heatmaps="yes", note="ignored")
    answer = request(app, "POST", headers=headers, chunks=[body])
    assert answer.status == 200, answer.body
    assert answer.json() == {"names": ["one.png", "two.png", "upload-2"], "contents": ["1", "2", "3"], "heatmaps": True}
    assert len(app.state.files) == 3 and all(f.closed for f in app.state.files)  # closed once answered
    headers, body = multipart([("files", "one.png", b"1")], heatmaps="0")
    assert request(app, "POST", headers=headers, chunks=[body]).json()["heatmaps"] is False


def test_uploads_that_cannot_be_read_get_their_status_and_one_line():
    app = upload_app(max_upload_mb=1, max_files=2)

    def post(headers: dict[str, str], chunks: list[bytes]) -> tuple[int, str]:
        answer = request(app, "POST", headers=headers, chunks=chunks)
        return answer.status, answer.json()["error"]

    big_headers, big = multipart([("files", "big.png", b"\0" * (3 * 2**20))])
    assert post(big_headers, [b""]) == (413, "request too large: 3.0 MiB, the limit is 1 MiB (--max-upload-mb)")
    chunked = {"content-type": big_headers["content-type"]}  # no Content-Length: counted while it arrives
    status, message = post(chunked, [big[i : i + 2**16] for i in range(0, len(big), 2**16)])
    assert (status, message) == (413, "request too large: over the limit of 1 MiB (--max-upload-mb)")
    assert post({"content-type": "application/json"}, [b"{}"]) == (
        415, "send the images as multipart/form-data, in the field 'files'"
    )  # fmt: skip
    headers, body = multipart([("files", f"{i}.png", b"x") for i in range(3)])
    assert post(headers, [body]) == (400, "bad upload: Too many files. Maximum number of files is 2.")
    assert post({"content-type": "multipart/form-data"}, [b"--x\r\n"]) == (
        400, "bad upload: Missing boundary in multipart."
    )  # fmt: skip
    headers, body = multipart([], note="hello")
    assert post(headers, [body]) == (400, "no files: send the images in the multipart field 'files'")
    headers, body = multipart([("pictures", "a.png", b"x")])
    assert post(headers, [body])[0] == 400  # files in another field are none


# ---- the routers --------------------------------------------------------------------------------------------------


class FakeScorer:
    """What api_router needs of a scorer: a worker and score(files, heatmaps)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.fail = fail

    def score(self, files: list, heatmaps: bool) -> list[dict]:
        if self.fail is not None:
            raise self.fail
        return [{"path": name, "bytes": len(file.read()), "heatmaps": heatmaps} for name, file in files]


def test_the_api_router_scores_uploads_on_the_scorers_worker_and_answers_its_failure_in_one_line():
    info = {"backbone": "fake", "limits": {"max_files": 2}}
    app = FastAPI(exception_handlers=exception_handlers())
    app.include_router(api_router(FakeScorer(), info, max_upload_mb=1, max_files=2))
    assert request(app, path="/api/info").json() == info
    headers, body = multipart([("files", "x/a.png", b"aa"), ("files", "b.png", b"bbb")], heatmaps="1")
    answer = request(app, "POST", "/api/score", headers=headers, chunks=[body])
    assert answer.status == 200 and answer.json() == {
        "records": [{"path": "a.png", "bytes": 2, "heatmaps": True}, {"path": "b.png", "bytes": 3, "heatmaps": True}]
    }
    assert request(app, "POST", "/api/score", headers={"content-type": "text/plain"}).status == 415
    failing = FastAPI(exception_handlers=exception_handlers())
    failing.include_router(api_router(FakeScorer(MemoryError("out of memory\nmore")), info, 1, 2))
    answer = request(failing, "POST", "/api/score", headers=headers, chunks=[body])
    assert answer.status == 500 and answer.json() == {"error": "scoring failed: MemoryError: out of memory"}


def test_the_page_router_serves_the_page_its_script_and_style_only():
    app = FastAPI(exception_handlers=exception_handlers())
    app.include_router(page_router())
    page = request(app)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html") and b"serve.js" in page.body
    assert request(app, path="/static/serve.js").headers["content-type"].startswith("text/javascript")
    assert request(app, path="/static/serve.css").headers["content-type"].startswith("text/css")
    answer = request(app, path="/static/report.html")
    assert answer.status == 404 and answer.json() == {"error": "no such file: report.html"}


def test_the_report_router_renders_a_folder_and_serves_its_plots_only(tmp_path: Path):
    report = tmp_path / "eval"
    (report / "plots").mkdir(parents=True)
    (report / "results.md").write_text("# Evaluation report\n\n| benchmark | AP |\n|---|---|\n| bench | 0.787 |\n")
    Image.fromarray(photo_like(40, 30)).save(report / "plots" / "roc.png")
    (report / "plots" / "notes.txt").write_text("not a plot")
    (report / "secret.png").write_bytes(b"not served")
    app = FastAPI(exception_handlers=exception_handlers())
    app.include_router(report_router(report))
    page = request(app, path="/report/")
    assert page.status == 200 and b"<td>0.787</td>" in page.body
    redirect = request(app, path="/report")
    assert redirect.status == 307 and redirect.headers["location"] == "/report/"
    plot = request(app, path="/report/plots/roc.png")
    assert plot.status == 200 and plot.headers["content-type"] == "image/png"
    assert plot.body == (report / "plots" / "roc.png").read_bytes()
    for name in ("notes.txt", "missing.png", "..%2Fsecret.png"):
        answer = request(app, path=f"/report/plots/{name}")
        assert answer.status == 404 and answer.json() == {"error": f"no such plot: {name}"}
    empty = FastAPI(exception_handlers=exception_handlers())
    empty.include_router(report_router(None))
    missing = request(empty, path="/report/")
    assert missing.status == 404 and b"sefmodel eval" in missing.body
    assert request(empty, path="/report/plots/roc.png").status == 404
