"""sefmodel serve: the JSON API gives sefmodel predict's records, the limits of a public demo hold, the report page
renders, and a burst of concurrent requests is answered in bounded memory (a small bench/serve_load.py run)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import urllib3
from conftest import REPO, huge_png, photo_like, scoring_inputs
from PIL import Image
from sef_cli.sefmodel import app
from typer.testing import CliRunner

from sefmodel.predict import load_detector
from sefmodel.serve.app import ServeConfig, background_server, create_app
from sefmodel.serve.middleware import host_allowed, same_origin

runner = CliRunner()
http = urllib3.PoolManager(retries=False)


def _load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "bench" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = scoring_inputs(tmp_path_factory.mktemp("uploads"))
    Image.fromarray(photo_like(300, 200, 4)).save(root / "wide.webp", quality=90)
    (root / "notes.png").write_text("<html>not an image, whatever the name says</html>")
    (root / "empty.png").write_bytes(b"")
    huge_png(root / "huge.png", 15000, 15000)  # 225 megapixels
    huge_png(root / "big.png", 8000, 8000)  # 64 megapixels: over the server's limit, under Pillow's own guard
    return root


@pytest.fixture(scope="module")
def server(tiny_run):
    config = ServeConfig(max_upload_mb=8, max_files=6, queue=4)
    with background_server(create_app(load_detector(tiny_run, "cpu"), config)) as url:
        yield url


def _post(url: str, items: list[tuple[str, bytes]], **fields: str) -> tuple[int, dict]:
    body, content_type = urllib3.encode_multipart_formdata([*(("files", i) for i in items), *fields.items()])
    response = http.request("POST", url + "api/score", body=body, headers={"Content-Type": content_type})
    return response.status, json.loads(response.data)


def _upload(folder: Path, *names: str) -> list[tuple[str, bytes]]:
    return [(name, (folder / name).read_bytes()) for name in names]


def test_the_api_answers_with_the_records_of_predict(server, tiny_run, files):
    names = ["good.png", "cmyk.jpg", "corrupt.jpg", "sixteen.png", "wide.webp"]
    result = runner.invoke(app, ["predict", str(tiny_run), *(str(files / n) for n in names), "--device", "cpu"])
    assert result.exit_code == 1, result.output  # the corrupt file
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    status, body = _post(server, _upload(files, *names))
    assert status == 200, body
    got = body["records"]
    assert [r["path"] for r in got] == names  # the uploaded names, in order
    for record, want in zip(got, expected, strict=True):
        assert record == {**want, "path": Path(want["path"]).name}
    assert set(got[0]["gate_weights"]) == {"recon", "sr"} and "explain" not in got[0]
    assert got[2]["error"].startswith("corrupt or truncated image")


def test_heatmaps_are_png_images_of_every_expert(server, files):
    status, body = _post(server, _upload(files, "good.png"), heatmaps="1")
    assert status == 200, body
    (record,) = body["records"]
    ex = record["explain"]
    assert set(ex["heatmaps"]) == {"recon", "sr", "fused"} and set(ex["expert_probs"]) == {"recon", "sr"}
    for uri in [ex["crop"], *ex["heatmaps"].values()]:
        assert uri.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "PNG" and image.size == (192, 192)
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(ex["heatmaps"]["recon"].split(",", 1)[1]))))
    crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(ex["crop"].split(",", 1)[1]))))
    assert np.abs(heat[..., :3].astype(int) - crop[..., :3]).mean() > 5  # the map is drawn over the crop


def test_bad_files_get_one_line_errors_and_bombs_are_refused_from_the_header(server, files):
    start = time.perf_counter()
    status, body = _post(server, _upload(files, "huge.png", "big.png", "notes.png", "empty.png", "good.png"))
    elapsed = time.perf_counter() - start
    assert status == 200, body
    huge, big, notes, empty, good = body["records"]
    limit = "over the limit of 50.0 megapixels (read from the header, nothing decoded)"
    assert huge["error"] == f"too many pixels: 225.0 megapixels, {limit}"  # past Pillow's guard, too
    assert big["error"] == f"too many pixels: 8000x8000 = 64.0 megapixels, {limit}"
    assert notes["error"].startswith("not an image in an accepted format (JPEG, PNG")
    assert empty["error"] == "empty (zero-byte) file"
    assert 0 < good["prob"] < 1
    assert all("\n" not in r.get("error", "") for r in body["records"])
    assert elapsed < 5  # decoding 225 + 64 megapixels would take far longer than reading two headers


def test_request_level_limits_answer_one_json_line(server, files):
    status, body = _post(server, [("x.png", b"\0" * (9 * 2**20))])
    assert status == 413 and body["error"].startswith("request too large: 9.0 MiB, the limit is 8 MiB")
    status, body = _post(server, _upload(files, *["good.png"] * 7))
    assert status == 400 and "Too many files" in body["error"]
    status, body = _post(server, [], note="hello")
    assert status == 400 and body["error"].startswith("no files")
    response = http.request("POST", server + "api/score", body=b"{}", headers={"Content-Type": "application/json"})
    assert response.status == 415 and json.loads(response.data)["error"].startswith("send the images as multipart")
    response = http.request("GET", server + "api/nothing")
    assert response.status == 404 and json.loads(response.data) == {"error": "Not Found"}
    # a page under another name (DNS rebinding) cannot reach a loopback server
    response = http.request("GET", server + "api/info", headers={"Host": "attacker.example"})
    assert response.status == 400 and json.loads(response.data)["error"].startswith("invalid Host header")
    response = http.request("GET", server)
    assert (
        response.headers["X-Content-Type-Options"] == "nosniff"
        and "default-src 'self'" in (response.headers["Content-Security-Policy"])
    )


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.2:7860", True),  # the address it is bound to
        ("localhost:7860", True),
        ("127.0.0.1:7860", True),
        ("[::1]:7860", True),
        ("[0:0:0:0:0:0:0:1]:7860", True),  # ::1 spelt out
        ("LOCALHOST:7860", True),
        ("127.0.0.2:7861", False),  # another port
        ("127.0.0.2", False),  # port 80
        ("127.0.0.3:7860", False),  # another loopback address
        ("attacker.example:7860", False),
        ("localhost.attacker.example:7860", False),
        ("user@127.0.0.2:7860", False),
        ("127.0.0.2:7860/", False),
        ("", False),
        (None, False),
    ],
)
def test_the_host_check_accepts_the_bound_address_and_the_loopback_names(host, allowed):
    assert host_allowed(host, ("127.0.0.2", 7860)) is allowed


def test_the_host_check_of_an_ipv6_server_and_of_port_80():
    assert host_allowed("[::1]:8000", ("::1", 8000)) and not host_allowed("[::2]:8000", ("::1", 8000))
    assert host_allowed("localhost", ("127.0.0.1", 80)) and not host_allowed("localhost", ("127.0.0.1", 8000))


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "same"),
    [
        (None, "http", "127.0.0.1:7860", True),  # curl, scripts: no browser, no Origin
        ("http://127.0.0.1:7860", "http", "127.0.0.1:7860", True),
        ("http://LocalHost:7860", "http", "localhost:7860", True),
        ("http://[::1]:7860", "http", "[::1]:7860", True),
        ("http://example.org", "http", "example.org:80", True),  # the default port, written or not
        ("https://example.org", "https", "example.org", True),  # behind a TLS proxy that says so
        ("http://attacker.example", "http", "127.0.0.1:7860", False),
        ("http://127.0.0.1:7861", "http", "127.0.0.1:7860", False),
        ("https://127.0.0.1:7860", "http", "127.0.0.1:7860", False),
        ("http://localhost:7860", "http", "127.0.0.1:7860", False),  # another name is another origin
        ("null", "http", "127.0.0.1:7860", False),  # sandboxed frames, file:// pages
        ("", "http", "127.0.0.1:7860", False),
    ],
)
def test_the_origin_check_accepts_the_servers_own_origin_or_none(origin, scheme, host, same):
    assert same_origin(origin, scheme, host) is same


def test_a_server_on_another_loopback_address_answers_its_own_address(tiny_run):
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError as e:  # e.g. macOS, whose loopback interface has 127.0.0.1 alone
        pytest.skip(f"127.0.0.2 is no address of this machine: {e}")
    app_ = create_app(load_detector(tiny_run, "cpu"), ServeConfig(host="127.0.0.2"))
    with background_server(app_, "127.0.0.2") as url:
        port = url.rsplit(":", 1)[1].strip("/")
        for host in (None, f"localhost:{port}", f"127.0.0.1:{port}"):
            response = http.request("GET", url + "api/info", headers={"Host": host} if host else {})
            assert response.status == 200, (host, response.data)
        for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.3:{port}", "127.0.0.2:1"):
            response = http.request("GET", url + "api/info", headers={"Host": host})
            assert response.status == 400, host
            assert json.loads(response.data) == {
                "error": f"invalid Host header {host!r}: this server answers only under its own address"
            }
            assert response.headers["X-Content-Type-Options"] == "nosniff"  # refusals carry the headers too


def test_a_post_from_another_page_is_refused(server, files):
    body, content_type = urllib3.encode_multipart_formdata([("files", ("good.png", (files / "good.png").read_bytes()))])
    own = server.rstrip("/")
    other_name = own.replace("127.0.0.1", "localhost")  # the same server under another name is another origin
    for origin, status in [("http://attacker.example", 403), ("null", 403), (other_name, 403), (own, 200), (None, 200)]:
        headers = {"Content-Type": content_type, **({"Origin": origin} if origin else {})}
        response = http.request("POST", server + "api/score", body=body, headers=headers)
        assert response.status == status, (origin, response.data)
        if status == 403:
            assert json.loads(response.data) == {
                "error": f"cross-origin request refused: Origin {origin!r} is not this server's"
            }
            assert b"\n" not in response.data
        else:
            assert 0 < json.loads(response.data)["records"][0]["prob"] < 1
    # a GET only reads, and another page cannot read the answer (no CORS headers): it is not checked
    assert http.request("GET", server + "api/info", headers={"Origin": "http://attacker.example"}).status == 200


def test_the_assembled_app_guards_before_it_counts_and_its_busy_answer_carries_the_headers(tiny_run, files):
    web = create_app(load_detector(tiny_run, "cpu"), ServeConfig(queue=1))
    entered, release = threading.Event(), threading.Event()

    def held(uploads: list, heatmaps: bool) -> list[dict]:  # the one admitted request waits on the worker
        entered.set()
        release.wait(30)
        return [{"path": name} for name, _ in uploads]

    web.state.scorer.score = held
    with background_server(web) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, url, _upload(files, "good.png"))
        assert entered.wait(30)
        body, content_type = urllib3.encode_multipart_formdata([("files", ("good.png", b"x"))])
        foreign = {"Content-Type": content_type, "Origin": "http://attacker.example"}
        assert http.request("POST", url + "api/score", body=body, headers=foreign).status == 403  # not 503
        busy = http.request("POST", url + "api/score", body=body, headers={"Content-Type": content_type})
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        assert json.loads(busy.data) == {"error": "busy: 1 requests are being scored or waiting; try again shortly"}
        assert busy.headers["X-Content-Type-Options"] == "nosniff"
        assert http.request("GET", url + "api/info").status == 200  # reading is never counted
        release.set()
        assert first.result(timeout=30) == (200, {"records": [{"path": "good.png"}]})


def test_report_page_renders_results_md_and_its_plots(tiny_run, tmp_path):
    report = tmp_path / "eval"
    (report / "plots").mkdir(parents=True)
    (report / "results.md").write_text(
        "# Evaluation report\n\n| benchmark | AP |\n|---|---|\n| bench | 0.787 |\n\n![ROC curves](plots/roc.png)\n\n"
        "<script>alert(1)</script>\n"
    )
    Image.fromarray(photo_like(40, 30)).save(report / "plots" / "roc.png")
    (report / "secret.txt").write_text("not served")
    detector = load_detector(tiny_run, "cpu")
    with background_server(create_app(detector, ServeConfig(), report)) as url:
        page = http.request("GET", url + "report/").data.decode()
        assert "<td>0.787</td>" in page and '<img src="plots/roc.png" alt="ROC curves"' in page
        assert "<script>alert" not in page and "&lt;script&gt;" in page  # raw HTML in the Markdown is escaped
        plot = http.request("GET", url + "report/plots/roc.png")
        assert plot.status == 200 and plot.headers["Content-Type"] == "image/png"
        for bad in ("report/plots/..%2Fsecret.txt", "report/plots/../secret.txt", "report/secret.txt"):
            assert http.request("GET", url + bad).status == 404
        assert json.loads(http.request("GET", url + "api/info").data)["report"] is True
    with background_server(create_app(detector, ServeConfig(), None)) as url:
        missing = http.request("GET", url + "report/")
        assert missing.status == 404 and "sefmodel eval" in missing.data.decode()


def test_report_page_names_the_detector_and_benchmarks_without_their_local_paths(tiny_run, tmp_path):
    report = tmp_path / "eval"
    report.mkdir()
    bench = tmp_path / "benchmarks" / "genimage-tiny"
    (report / "results.md").write_text(  # the lines of sefmodel eval's report that name paths
        f"# Evaluation report\n\nDetector `{tiny_run}/detector`: backbone `dinov2` (`/models/dinov2-large`), "
        "experts `recon`, `sr`.\n\n| benchmark | AP |\n|---|---|\n| genimage-tiny | 0.787 |\n\n## genimage-tiny\n\n"
        f"Source: `{bench}` (plain real/fake folder layout).\n\n- 1 image(s) could not be read, e.g.:\n"
        f"  - `{bench}/fake/x.png`: corrupt\n- warning: see ~/notes/bench.txt\n"
    )
    with background_server(create_app(load_detector(tiny_run, "cpu"), ServeConfig(), report)) as url:
        page = http.request("GET", url + "report/").data.decode()
    for private in (str(tmp_path), str(tiny_run), "/models/", "~/notes"):
        assert private not in page
    assert "<code>detector</code>: backbone <code>dinov2</code> (<code>dinov2-large</code>)" in page
    assert "Source: <code>genimage-tiny</code>" in page and "<code>x.png</code>: corrupt" in page
    assert "see bench.txt" in page and "<td>0.787</td>" in page


def test_cli_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    result = runner.invoke(app, ["serve", str(tmp_path), "--port", "70000"])
    assert result.exit_code == 2 and result.output == "error: --port must be 0-65535, got 70000\n"
    result = runner.invoke(app, ["serve", "--help"])
    assert "127.0.0.1" in result.output and "--max-pixels N" in result.output


@pytest.mark.slow
def test_a_burst_is_answered_in_bounded_memory_and_leaves_no_files(tiny_run):
    """bench/serve_load.py, smaller: `sefmodel serve` in a subprocess, 40 requests at once against a queue of 4."""
    bench = _load_bench()
    images = [(f"p{i}.png", _png(photo_like(64 + i, 48, i))) for i in range(5)]
    images.append(("noise.png", bench.noise_png()))  # 1.9 MB: spills to a temporary file
    result = bench.run_load(tiny_run, images, requests=40, queue=4, server_args=("--threads", "1"))
    assert result["answers"]["wrong"] == 0 and result["answers"]["failed"] == 0, result
    assert result["answered"] == 40 and result["answers"]["scored"] >= 4
    assert result["server_rss_mib"]["growth_during_burst"] < 200, result["server_rss_mib"]
    assert result["temp_files_left"] == [] and result["server_exit_code"] == 0


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()
