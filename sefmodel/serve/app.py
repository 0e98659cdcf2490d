"""``sefmodel serve``: a local web page and JSON API to try a detector (FastAPI on uvicorn).

Routes (:mod:`sefmodel.serve.routes`):

* ``GET /``: the page (``sefmodel/serve/static/``): drop images or a folder, see per image P(generated), the decision at
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
never held), loopback by default (with a Host-header check against DNS rebinding), posts from other pages' forms
refused (an ``Origin`` check): the middleware of :mod:`sefmodel.serve.middleware`. Uploads are parsed by Starlette:
up to 1 MB per file in memory, beyond it in a temporary file; :func:`serve` points those temporary files at a
folder of its own, removed when the server stops. Nothing else is written.

This module holds the settings, the scorer and the assembly (:func:`create_app`), and runs the server; it imports the
web stack only when an app is made.
"""

import base64
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sefcore.errors import SefError
from sefcore.fields import doc, same_as
from sefmodel.runtime import RuntimeOptions
from sefmodel.serve.middleware import is_loopback

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sefmodel.model.detector import SEFDetector

UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Image formats the server decodes (Pillow plugins; JPEG includes the MPO camera variant), sniffed from the
bytes; everything else (EPS, PSD, ...) is refused."""


@dataclass
class ServeConfig:
    """How ``sefmodel serve`` listens and what it accepts."""

    host: str = field(
        default="127.0.0.1",
        metadata=doc("Address to listen on; the default answers this machine only. 0.0.0.0 opens it to the network.",
                     metavar="ADDRESS"),
    )  # fmt: skip
    port: int = field(default=7860, metadata=doc("TCP port; 0 picks a free one (the URL is printed)."))
    report: str | None = field(
        default=None,
        metadata=doc("Folder of the run's `sefmodel eval` output (results.md, plots/) shown at /report (default: "
                     "RUN/eval)", metavar="DIR"),
    )  # fmt: skip
    threshold: float | None = field(
        default=None,
        metadata=doc("Decision threshold: an image is called generated when prob > threshold, as in sefmodel predict "
                     "(default: the detector's threshold.json, else 0.5)", metavar="P"),
    )  # fmt: skip
    uncertain: str | None = field(
        default=None,
        metadata=doc("Label an image 'uncertain' when LOW <= prob <= HIGH instead of forcing a decision (as sefmodel "
                     "predict).", metavar="LOW,HIGH"),
    )  # fmt: skip
    crop: str | None = same_as(RuntimeOptions, "crop")
    device: str = same_as(RuntimeOptions, "device")
    threads: int = same_as(RuntimeOptions, "threads")
    batch_size: int = field(
        default=4,
        metadata=doc("Images per forward pass; smaller than the other commands' default because decoded uploads "
                     "wait in memory until their batch runs.", metavar="N"),
    )  # fmt: skip
    max_upload_mb: float = field(
        default=64.0,
        metadata=doc("Largest request body in MiB (all files of one request); larger requests get 413.",
                     metavar="MIB"),
    )  # fmt: skip
    max_pixels: int = field(
        default=50_000_000,
        metadata=doc("Refuse images with more pixels, judged from the header before decoding (decompression bombs)."),
    )
    max_files: int = field(default=64, metadata=doc("Most files in one request."))
    queue: int = field(
        default=8,
        metadata=doc("Requests admitted at once (one scoring, the rest waiting); more get 503 busy at once."),
    )
    no_heatmaps: bool = field(
        default=False,
        metadata=doc("Do not compute Grad-CAM heatmaps (they cost a backward pass per expert per image)."),
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SefError(f"--port must be 0-65535, got {self.port}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise SefError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.crop is not None:
            from sefmodel.model.preprocess import check_crop  # torch: not at import, which --help does

            check_crop(self.crop)
        from sefmodel.evaluation.threshold import UncertainBand

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
        return is_loopback(self.host)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Scorer:
    """The detector, behind one worker thread; runs the code paths of ``sefmodel predict`` and ``explain``."""

    def __init__(self, detector: "SEFDetector", config: ServeConfig) -> None:
        from sefmodel.evaluation.threshold import UncertainBand, decision_threshold

        self.detector = detector
        self.config = config
        self.threshold, self.threshold_source = decision_threshold(detector, config.threshold)
        self.uncertain = UncertainBand.parse(config.uncertain)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sef-score")

    def score(self, uploads: list[tuple[str, Any]], heatmaps: bool) -> list[dict[str, Any]]:
        """Records for ``(name, binary file)`` pairs, in order (runs on the worker thread)."""
        from sefmodel.images import open_image_file
        from sefmodel.predict import predict_records

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
        from sefmodel.explain import grad_cam, heatmap_png

        ex = grad_cam(self.detector, image)
        return {
            "crop": _data_uri(heatmap_png(ex, None)),
            "heatmaps": {name: _data_uri(heatmap_png(ex, name)) for name in ex.maps},
            "expert_probs": {name: round(p, 6) for name, p in ex.expert_probs.items()},
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def detector_info(scorer: Scorer, report: Path | None) -> dict[str, Any]:
    """What the page shows about the scorer's detector, its decision rule and the limits (``GET /api/info``)."""
    from sefcore.imagefiles import IMAGE_EXTENSIONS

    detector, config, band = scorer.detector, scorer.config, scorer.uncertain
    described = detector.describe()
    return {
        "backbone": described["backbone"],
        "experts": list(described["experts"]),
        "fusion": described["fusion"],
        "image_size": described["image_size"],
        "description": described.get("description"),  # an AEROBLADE detector's one line; None for SEF
        "threshold": scorer.threshold,
        "threshold_source": scorer.threshold_source,
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
        "folder_extensions": sorted(
            f".{e}" for e in IMAGE_EXTENSIONS
        ),  # what a dropped folder contributes, as `predict DIR`
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


def create_app(detector: "SEFDetector", config: ServeConfig | None = None, report: Path | None = None) -> "FastAPI":
    """The web app for ``detector``; run it with :func:`serve`, :func:`background_server` or any ASGI server."""
    try:
        from fastapi import FastAPI

        from sefmodel.serve.routes import api_router, page_router, report_router
    except ImportError as e:
        raise SefError(f"sefmodel serve needs the web extras ({e.name} is missing): "
                       "pip install 'sef-toolkit[serve]'") from None  # fmt: skip
    from sefmodel.serve.middleware import AdmissionLimit, RequestGuard, SecurityHeaders, exception_handlers

    config = config or ServeConfig()
    scorer = Scorer(detector, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        scorer.close()

    app = FastAPI(title="SEF detector", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  exception_handlers=exception_handlers())  # fmt: skip
    app.state.scorer = scorer
    # The last added is the outermost: the headers go on every answer, the guard's refusals included, and the guard
    # refuses before a request takes one of the admission slots.
    app.add_middleware(AdmissionLimit, limit=config.queue, routes=[("POST", "/api/score")],
                       drain_bytes=config.max_upload_bytes)  # fmt: skip
    app.add_middleware(RequestGuard, check_host=config.loopback)
    app.add_middleware(SecurityHeaders)
    app.include_router(page_router())
    app.include_router(api_router(scorer, detector_info(scorer, report), config.max_upload_mb,
                                  config.max_files))  # fmt: skip
    app.include_router(report_router(report))
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
    "Scorer",
    "ServeConfig",
    "background_server",
    "create_app",
    "detector_info",
    "find_report",
    "serve",
]
