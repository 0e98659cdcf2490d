"""The routes of ``sefmodel serve`` (:func:`sefmodel.serve.app.create_app`), as FastAPI routers built from what they
need, and the upload parsing of ``POST /api/score`` (:func:`read_uploads`):

* :func:`page_router`: ``GET /`` and its script and style under ``/static/``.
* :func:`api_router`: ``GET /api/info`` and ``POST /api/score``.
* :func:`report_router`: ``/report/``, the run's ``results.md`` with its plots.

Errors are ``{"error": "one line"}`` (:func:`sefmodel.serve.middleware.error_response`); :func:`read_uploads` raises
them as ``HTTPException``, which the app's handler (:func:`sefmodel.serve.middleware.exception_handlers`) answers.
Imports the web stack: load it only to serve.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) as objects.
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from sefcore.privacy import public_text
from sefmodel.serve.middleware import error_response

if TYPE_CHECKING:
    from sefmodel.serve.app import Scorer

_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


def _static(name: str) -> str:
    return resources.files("sefmodel.serve").joinpath("static", name).read_text(encoding="utf-8")


# ---- the page -----------------------------------------------------------------------------------------------------

_STATIC_TYPES = {"serve.js": "text/javascript", "serve.css": "text/css"}


def page_router() -> APIRouter:
    """``GET /`` (``static/serve.html`` beside this module) and ``GET /static/{serve.js,serve.css}``; any other name is
    404."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("serve.html"))

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC_TYPES:
            return error_response(404, f"no such file: {name}")
        return Response(_static(name), media_type=_STATIC_TYPES[name])

    return router


# ---- uploads ------------------------------------------------------------------------------------------------------


@dataclass
class Uploads:
    """The images of one ``POST /api/score``: ``(name, binary file)`` pairs in the order sent, and whether
    heatmaps were asked for (``heatmaps=1``)."""

    files: list[tuple[str, BinaryIO]]
    heatmaps: bool


class _TooLarge(Exception):
    pass


def _limited(receive: Callable, limit: int) -> Callable:
    """An ASGI ``receive`` that raises once the request body passes ``limit`` bytes (chunked uploads included)."""
    seen = 0

    async def limited_receive() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return limited_receive


def upload_name(name: str | None, index: int) -> str:
    """The uploaded file's name without folders or control characters (browsers send folder drops as a/b.png)."""
    base = _UNSAFE_NAME.sub("", (name or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return base[:200] or f"upload-{index}"


@contextlib.asynccontextmanager
async def read_uploads(request: Request, max_upload_mb: float, max_files: int) -> AsyncIterator[Uploads]:
    """The files of a multipart request (field ``files``), open for the block and closed after it. Raises
    ``HTTPException``: 413 past ``max_upload_mb`` MiB (from Content-Length, else while reading), 415 when not
    multipart, 400 for a malformed body, more than ``max_files`` files or none. Starlette keeps up to 1 MB per file in
    memory, more in a temporary file."""
    limit = int(max_upload_mb * 2**20)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"request too large: {int(length) / 2**20:.1f} MiB, the limit is "
                                 f"{max_upload_mb:g} MiB (--max-upload-mb)")  # fmt: skip
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the images as multipart/form-data, in the field 'files'")
    try:
        form = await Request(request.scope, _limited(request.receive, limit)).form(max_files=max_files, max_fields=8)
    except _TooLarge:
        message = f"request too large: over the limit of {max_upload_mb:g} MiB (--max-upload-mb)"
        raise HTTPException(413, message) from None
    except HTTPException as e:  # malformed multipart, too many files
        raise HTTPException(400, f"bad upload: {e.detail}") from None
    try:
        files = [(upload_name(f.filename, i), f.file) for i, f in enumerate(form.getlist("files"))
                 if isinstance(f, UploadFile)]  # fmt: skip
        if not files:
            raise HTTPException(400, "no files: send the images in the multipart field 'files'")
        heatmaps = str(form.get("heatmaps", "")).lower() in ("1", "true", "yes", "on")
        yield Uploads(files, heatmaps)
    finally:
        await form.close()


# ---- the API ------------------------------------------------------------------------------------------------------


def api_router(scorer: "Scorer", info: dict[str, Any], max_upload_mb: float, max_files: int) -> APIRouter:
    """``GET /api/info`` (``info``: :func:`sefmodel.serve.app.detector_info`) and ``POST /api/score``: the uploads
    (:func:`read_uploads`) scored by ``scorer`` on its worker thread (anything with ``executor`` and
    ``score(files, heatmaps)``: :class:`sefmodel.serve.app.Scorer`), answered as ``{"records": [...]}``."""
    router = APIRouter()

    @router.get("/api/info")
    async def api_info() -> dict:
        return info

    @router.post("/api/score")
    async def api_score(request: Request) -> JSONResponse:
        async with read_uploads(request, max_upload_mb, max_files) as uploads:
            loop = asyncio.get_running_loop()
            try:
                records = await loop.run_in_executor(scorer.executor, scorer.score, uploads.files, uploads.heatmaps)
            except Exception as e:  # e.g. out of memory on the device: the request fails, the server stays
                first = (str(e).strip().splitlines() or [""])[0]
                return error_response(500, f"scoring failed: {type(e).__name__}: {first}")
            return JSONResponse({"records": records})

    return router


# ---- the report ---------------------------------------------------------------------------------------------------


def render_report(folder: Path) -> str:
    """``results.md`` as an HTML page (raw HTML in the Markdown is escaped, not passed through). Local paths (the
    detector's, the benchmarks') are reduced to their names, as ``sefmodel publish`` does: the page may be public."""
    from markdown_it import MarkdownIt

    text = public_text((folder / "results.md").read_text(encoding="utf-8"))
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return _report_page(body)


def _report_page(body: str) -> str:
    return _static("report.html").replace("<!--REPORT-->", body)


def report_router(report: Path | None) -> APIRouter:
    """``GET /report/``: ``report/results.md`` rendered (:func:`render_report`), or a 404 page that says how to make
    one when ``report`` is None; ``/report`` redirects there; ``GET /report/plots/NAME.png`` serves its plots and
    nothing else of the folder."""
    router = APIRouter()

    @router.get("/report")
    async def report_redirect() -> RedirectResponse:
        return RedirectResponse("/report/")

    @router.get("/report/", response_class=HTMLResponse)
    async def report_page() -> Response:
        if report is None:
            missing = ("<p class=error>No evaluation report for this detector: run <code>sefmodel eval RUN --bench "
                       "...</code> and start the server with <code>--report DIR</code>.</p>")  # fmt: skip
            return HTMLResponse(_report_page(missing), status_code=404)
        return HTMLResponse(render_report(report))

    @router.get("/report/plots/{name}")
    async def report_plot(name: str) -> Response:
        path = report / "plots" / name if report is not None else None
        if path is None or not re.fullmatch(r"[\w.-]+\.png", name) or not path.is_file():
            return error_response(404, f"no such plot: {name}")
        return FileResponse(path, media_type="image/png")

    return router


__all__ = ["Uploads", "api_router", "page_router", "read_uploads", "render_report", "report_router", "upload_name"]
