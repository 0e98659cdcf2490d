"""``sefmodel serve``: a local web page and JSON API to try a detector (FastAPI on uvicorn).

Routes:

* ``GET /``: the page (``sefmodel/static/``): drop images or a folder, see per image P(generated), the decision at
  the threshold, the gate weights and one Grad-CAM heatmap per expert (:mod:`sefmodel.explain`).
* ``POST /api/score``: multipart form, images in the field ``files`` (one or more), optional ``heatmaps=1``.
  Answers ``{"records": [...]}``: the records ``sefmodel predict`` writes (:func:`sefmodel.predict.predict_records`,
  ``path`` = the uploaded file's name), each with ``explain`` (PNG data URIs of the crop and the heatmaps, and the
  experts' own probabilities) when heatmaps were asked for. A request that cannot be served gets
  ``{"error": "one line"}`` with a 4xx/5xx status; 503 ``busy`` when the queue is full.
* ``GET /api/info``: the detector and the limits.  ``GET /report/``: the run's ``results.md`` with its plots.

Limits for a public demo (:class:`ServeConfig`): the request body size, files per request and pixels per image
(judged from the header before decoding; :func:`sefmodel.images.open_image_file`), formats sniffed from the bytes,
one scoring thread behind a bounded admission count (beyond it: 503 ``busy`` at once, the body read and discarded,
never held), loopback by default (with a Host-header check against DNS rebinding: :func:`host_allowed`), posts from
other pages' forms refused (an ``Origin`` check: :func:`same_origin`). Uploads are parsed by Starlette:
up to 1 MB per file in memory, beyond it in a temporary file; :func:`serve` points those temporary files at a
folder of its own, removed when the server stops. Nothing else is written.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, imported inside
# create_app so that the web stack loads only when serving) as objects.
import asyncio
import base64
import contextlib
import ipaddress
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sefdata.errors import SefError
from sefdata.privacy import public_text

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .detector import SEFDetector

UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Image formats the server decodes (Pillow plugins; JPEG includes the MPO camera variant), sniffed from the
bytes; everything else (EPS, PSD, ...) is refused."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")
_HOST_HEADER = re.compile(r"(?P<name>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


@dataclass
class ServeConfig:
    """How ``sefmodel serve`` listens and what it accepts."""

    host: str = "127.0.0.1"
    """Address to listen on; the default answers this machine only. 0.0.0.0 opens it to the network."""
    port: int = 7860
    """TCP port; 0 picks a free one (the URL is printed)."""
    report: str | None = None
    """Folder of the run's `sefmodel eval` output (results.md, plots/) shown at /report (default: RUN/eval)"""
    threshold: float | None = None
    """Decision threshold: an image is called generated when prob > threshold, as in sefmodel predict (default:
    the detector's threshold.json, else 0.5)"""
    uncertain: str | None = None
    """Label an image 'uncertain' when LOW <= prob <= HIGH instead of forcing a decision (as sefmodel predict)."""
    crop: str | None = None
    """Crops per image, center or multi (default: the detector's config)"""
    device: str = "auto"
    """auto, cpu or cuda[:i]."""
    threads: int = 0
    """Threads torch computes with while scoring; 0 keeps torch's default (one per core). On a machine busy with
    other work, 1 avoids threads spinning while they wait for a core."""
    batch_size: int = 4
    """Images per forward pass (decoded images wait in memory until their batch runs)."""
    max_upload_mb: float = 64.0
    """Largest request body in MiB (all files of one request); larger requests get 413."""
    max_pixels: int = 50_000_000
    """Refuse images with more pixels, judged from the header before decoding (decompression bombs)."""
    max_files: int = 64
    """Most files in one request."""
    queue: int = 8
    """Requests admitted at once (one scoring, the rest waiting); more get 503 busy at once."""
    no_heatmaps: bool = False
    """Do not compute Grad-CAM heatmaps (they cost a backward pass per expert per image)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SefError(f"--port must be 0-65535, got {self.port}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise SefError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.crop is not None:
            from .preprocess import check_crop  # torch: not at import, which --help does

            check_crop(self.crop)
        from .threshold import UncertainBand

        UncertainBand.parse(self.uncertain)
        for name in ("batch_size", "max_pixels", "max_files", "queue"):
            if getattr(self, name) < 1:
                raise SefError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise SefError(f"--threads must be >= 0, got {self.threads}")
        if self.max_upload_mb <= 0:
            raise SefError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def loopback(self) -> bool:
        if self.host in LOOPBACK_HOSTS:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


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
                from starlette.responses import JSONResponse

                status, message = refusal
                await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
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


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _upload_name(name: str | None, index: int) -> str:
    """The uploaded file's name without folders or control characters (browsers send folder drops as a/b.png)."""
    base = _UNSAFE_NAME.sub("", (name or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return base[:200] or f"upload-{index}"


class Scorer:
    """The detector, behind one worker thread; runs the code paths of ``sefmodel predict`` and ``explain``."""

    def __init__(self, detector: "SEFDetector", config: ServeConfig) -> None:
        from .threshold import UncertainBand, decision_threshold

        self.detector = detector
        self.config = config
        self.threshold, self.threshold_source = decision_threshold(detector, config.threshold)
        self.uncertain = UncertainBand.parse(config.uncertain)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sef-score")
        self.admitted = 0  # touched only on the event loop's thread

    def score(self, uploads: list[tuple[str, Any]], heatmaps: bool) -> list[dict[str, Any]]:
        """Records for ``(name, binary file)`` pairs, in order (runs on the worker thread)."""
        from .images import open_image_file
        from .predict import predict_records

        def opener(file: Any) -> Callable:
            return lambda: open_image_file(file, max_pixels=self.config.max_pixels, formats=UPLOAD_FORMATS)

        c = self.config
        inputs = [(name, opener(file)) for name, file in uploads]
        records = list(predict_records(self.detector, inputs, c.batch_size, c.crop, self.threshold, self.uncertain))
        if heatmaps and not c.no_heatmaps and self.detector.explainable:
            for record, (_, file) in zip(records, uploads, strict=True):
                if "error" in record:
                    continue
                try:
                    record["explain"] = self._explain(opener(file)())
                except Exception as e:  # the score stands; only its heatmaps are missing, and the record says why
                    record["explain_error"] = f"no heatmaps: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        return records

    def _explain(self, image: Any) -> dict[str, Any]:
        from .explain import grad_cam, heatmap_png

        ex = grad_cam(self.detector, image)
        return {
            "crop": _data_uri(heatmap_png(ex, None)),
            "heatmaps": {name: _data_uri(heatmap_png(ex, name)) for name in ex.maps},
            "expert_probs": {name: round(p, 6) for name, p in ex.expert_probs.items()},
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def detector_info(detector: "SEFDetector", config: ServeConfig, report: Path | None) -> dict[str, Any]:
    """What the page shows about the detector and the limits (``GET /api/info``)."""
    from .benchmarks import IMAGE_EXTENSIONS
    from .threshold import UncertainBand, decision_threshold

    threshold, source = decision_threshold(detector, config.threshold)
    band = UncertainBand.parse(config.uncertain)

    described = detector.describe()
    return {
        "backbone": described["backbone"],
        "experts": list(described["experts"]),
        "fusion": described["fusion"],
        "image_size": described["image_size"],
        "description": described.get("description"),  # an AEROBLADE detector's one line; None for SEF
        "threshold": threshold,
        "threshold_source": source,
        "uncertain": [band.low, band.high] if band else None,
        "heatmaps": not config.no_heatmaps and detector.explainable,
        "report": report is not None,
        "limits": {
            "max_upload_mb": config.max_upload_mb,
            "max_pixels": config.max_pixels,
            "max_files": config.max_files,
            "queue": config.queue,
            "formats": list(UPLOAD_FORMATS),
        },
        "folder_extensions": sorted(IMAGE_EXTENSIONS),  # what a dropped folder contributes, as `predict DIR`
    }


def find_report(run: str, config: ServeConfig) -> Path | None:
    """The eval folder shown at /report: ``--report``, else ``RUN/eval`` when it holds a results.md."""
    if config.report:
        folder = Path(config.report).expanduser()
        if not (folder / "results.md").is_file():
            raise SefError(f"--report {folder}: no results.md there (write one with: sefmodel eval RUN --out DIR)")
        return folder
    folder = Path(run).expanduser() / "eval"
    return folder if (folder / "results.md").is_file() else None


def _static(name: str) -> str:
    return resources.files("sefmodel").joinpath("static", name).read_text(encoding="utf-8")


def render_report(folder: Path) -> str:
    """``results.md`` as an HTML page (raw HTML in the Markdown is escaped, not passed through). Local paths (the
    detector's, the benchmarks') are reduced to their names, as ``sefmodel publish`` does: the page may be public."""
    from markdown_it import MarkdownIt

    text = public_text((folder / "results.md").read_text(encoding="utf-8"))
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return _report_page(body)


def _report_page(body: str) -> str:
    return _static("report.html").replace("<!--REPORT-->", body)


def create_app(detector: "SEFDetector", config: ServeConfig | None = None, report: Path | None = None) -> "FastAPI":
    """The web app for ``detector``; run it with :func:`serve`, :func:`background_server` or any ASGI server."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import HTTPException, RequestValidationError
        from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as e:
        raise SefError(f"sefmodel serve needs the web extras ({e.name} is missing): "
                       "pip install 'sef-toolkit[serve]'") from None  # fmt: skip

    config = config or ServeConfig()
    scorer = Scorer(detector, config)
    info = detector_info(detector, config, report)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        scorer.close()

    app = FastAPI(title="SEF detector", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.scorer = scorer

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    app.add_middleware(RequestGuard, check_host=config.loopback)

    @app.middleware("http")  # added last, so outermost: the guard's refusals get these headers too
    async def headers(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return error(422, "; ".join(str(x.get("msg", x)) for x in e.errors()) or "invalid request")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("serve.html"))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        types = {"serve.js": "text/javascript", "serve.css": "text/css"}
        if name not in types:
            return error(404, f"no such file: {name}")
        return Response(_static(name), media_type=types[name])

    @app.get("/api/info")
    async def api_info() -> dict:
        return info

    @app.post("/api/score")
    async def api_score(request: Request) -> JSONResponse:
        if scorer.admitted >= config.queue:
            drained = 0
            async for chunk in request.stream():  # read and drop: the client then reads the answer, not a reset
                drained += len(chunk)
                if drained > config.max_upload_bytes:
                    break
            return error(503, f"busy: {config.queue} requests are being scored or waiting; try again shortly",
                         {"Retry-After": "1"})  # fmt: skip
        scorer.admitted += 1
        try:
            return await _score(request)
        finally:
            scorer.admitted -= 1

    async def _score(request: Request) -> JSONResponse:
        limit = config.max_upload_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return error(413, f"request too large: {int(length) / 2**20:.1f} MiB, the limit is "
                              f"{config.max_upload_mb:g} MiB (--max-upload-mb)")  # fmt: skip
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send the images as multipart/form-data, in the field 'files'")
        try:
            form = await Request(request.scope, _limited(request.receive, limit)).form(
                max_files=config.max_files, max_fields=8
            )
        except _TooLarge:
            return error(413, f"request too large: over the limit of {config.max_upload_mb:g} MiB (--max-upload-mb)")
        except HTTPException as e:  # malformed multipart, too many files
            return error(400, f"bad upload: {e.detail}")
        try:
            uploads = [(_upload_name(f.filename, i), f.file) for i, f in enumerate(form.getlist("files"))
                       if isinstance(f, UploadFile)]  # fmt: skip
            if not uploads:
                return error(400, "no files: send the images in the multipart field 'files'")
            heatmaps = str(form.get("heatmaps", "")).lower() in ("1", "true", "yes", "on")
            loop = asyncio.get_running_loop()
            try:
                records = await loop.run_in_executor(scorer.executor, scorer.score, uploads, heatmaps)
            except Exception as e:  # e.g. out of memory on the device: the request fails, the server stays
                first = (str(e).strip().splitlines() or [""])[0]
                return error(500, f"scoring failed: {type(e).__name__}: {first}")
            return JSONResponse({"records": records})
        finally:
            await form.close()

    @app.get("/report")
    async def report_redirect() -> RedirectResponse:
        return RedirectResponse("/report/")

    @app.get("/report/", response_class=HTMLResponse)
    async def report_page() -> Response:
        if report is None:
            missing = ("<p class=error>No evaluation report for this detector: run <code>sefmodel eval RUN --bench "
                       "...</code> and start the server with <code>--report DIR</code>.</p>")  # fmt: skip
            return HTMLResponse(_report_page(missing), status_code=404)
        return HTMLResponse(render_report(report))

    @app.get("/report/plots/{name}")
    async def report_plot(name: str) -> Response:
        path = report / "plots" / name if report is not None else None
        if path is None or not re.fullmatch(r"[\w.-]+\.png", name) or not path.is_file():
            return error(404, f"no such plot: {name}")
        return FileResponse(path, media_type="image/png")

    return app


# ---- running it -------------------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # connections made before uvicorn accepts (right after the URL is printed) wait, not fail
    except OSError as e:
        sock.close()
        raise SefError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _server(app: "FastAPI") -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))


@contextlib.contextmanager
def background_server(app: "FastAPI", host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` on a uvicorn thread for the duration of the block; yields its URL (tests, notebooks)."""
    sock = _bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SefError("the web server did not start")
        time.sleep(0.01)
    try:
        yield _url(sock, host)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def serve(app: "FastAPI", config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Serve ``app`` until interrupted (Ctrl-C). Starlette's upload spool files go to a temporary folder of this
    process, removed on the way out."""
    sock = _bind(config.host, config.port)
    spool = tempfile.mkdtemp(prefix="sef-serve-")
    previous, tempfile.tempdir = tempfile.tempdir, spool
    try:
        announce(_url(sock, config.host))
        _server(app).run(sockets=[sock])
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(spool, ignore_errors=True)
        sock.close()


__all__ = [
    "RequestGuard",
    "ServeConfig",
    "background_server",
    "create_app",
    "detector_info",
    "find_report",
    "host_allowed",
    "same_origin",
    "serve",
]
