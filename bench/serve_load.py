"""Load test of ``sefmodel serve`` (DESIGN.md §11): a burst of concurrent uploads over loopback, every one answered.

Starts ``sefmodel serve`` (the installed one, ``python -m sef_cli.sefmodel``) in a subprocess on 127.0.0.1 with a
free port and its temporary folder under a folder of this script's. The detector: ``--run RUN``, else one built from
config on the pretrained MobileNetV2 of the shared assets with random heads (the demo detector's compute: 96-px
crops of hidden state 2, two experts, SEF gate). Images: the shared photos plus one 1.9 MB noise PNG, so uploads
both stay in memory and spill to Starlette's temporary files.

In the same run:
  * baseline: after one untimed warm-up request, each image sent alone, one request after another (the reference
    record of each image, and the sequential throughput); the records are checked against ``predict_files`` run
    here on the same files;
  * the burst: ``--requests`` clients (one thread and one connection each, one image each, cycling through the
    images) released at once by a barrier. Each answer is counted as ``scored`` (HTTP 200 and the reference record,
    prob within 1e-6), ``busy`` (503 with a JSON ``error`` starting "busy"), ``wrong`` (200 but another record) or
    ``failed`` (anything else, connection errors included).
The server's resident memory (VmRSS of /proc/PID/status, sampled every 20 ms) is recorded after warm-up and at its
peak during the burst; after the server stops (SIGINT), the temporary folder it was given must be empty.

Writes bench/results/serve_load.json; headline: the server's peak RSS growth during the burst (MiB).

    python bench/serve_load.py [--requests 200] [--queue 8] [--run RUN] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def noise_png(side: int = 800, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def demo_like_detector(folder: Path, assets: Path) -> Path:
    """The demo detector's architecture on the shared pretrained MobileNetV2, heads random (seeded)."""
    import torch

    from sefmodel import DetectorConfig, SEFDetector

    torch.manual_seed(0)
    config = DetectorConfig(
        backbone="mobilenet_v2", backbone_id=str(assets / "weights" / "mobilenet_v2_1.0_224"), processor={"size": 96},
        feature_layer=2, feature_pool="mean_std", gate_hidden=32, experts=["recon", "sr"], fusion="sef",
    )  # fmt: skip
    SEFDetector(config).save_pretrained(folder)
    return folder


class Server:
    """``sefmodel serve RUN`` in a subprocess; ``url`` once it listens."""

    def __init__(self, run: Path | str, args: list[str], spool: Path) -> None:
        env = {**os.environ, "TMPDIR": str(spool), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "sef_cli.sefmodel", "serve", str(run), "--port", "0", "--device", "cpu", *args]
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        line = self.proc.stdout.readline()
        match = re.search(r"at (http://\S+/)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"sefmodel serve did not start: {line}{self.proc.stderr.read()[-2000:]}")
        self.url = match.group(1)
        self.stderr = ""

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, self.stderr = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
        return self.proc.returncode


def post(url: str, images: list[tuple[str, bytes]], **fields: str) -> tuple[int, dict]:
    """POST /api/score on its own connection; (status, JSON body), or (0, {"error": ...}) on a connection error."""
    import urllib3

    body, content_type = urllib3.encode_multipart_formdata(
        [*(("files", (name, data)) for name, data in images), *fields.items()]
    )
    pool = urllib3.connection_from_url(url, maxsize=1, retries=False, timeout=urllib3.Timeout(connect=30, read=600))
    try:
        response = pool.request("POST", "/api/score", body=body, headers={"Content-Type": content_type})
        try:
            return response.status, json.loads(response.data)
        except ValueError:
            return response.status, {"error": response.data[:200].decode("latin-1")}
    except urllib3.exceptions.HTTPError as e:
        return 0, {"error": f"{type(e).__name__}: {e}"}
    finally:
        pool.close()


def same_record(a: dict, b: dict) -> bool:
    if set(a) != set(b) or a.get("label") != b.get("label"):
        return False
    gates_a, gates_b = a.get("gate_weights") or {}, b.get("gate_weights") or {}
    return abs(a["prob"] - b["prob"]) <= 1e-6 and all(abs(gates_a[k] - gates_b[k]) <= 1e-6 for k in gates_a)


def run_load(run: Path | str, images: list[tuple[str, bytes]], requests: int = 200, queue: int = 8,
             server_args: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """Start a server for ``run``, measure the sequential baseline and one burst of ``requests``; see the module
    docstring. Returns the figures (and ``reference``: the baseline record of each image)."""
    with tempfile.TemporaryDirectory(prefix="serve-load-") as spool:
        server = Server(run, ["--queue", str(queue), *server_args], Path(spool))
        pid = server.proc.pid
        try:
            rss_start = rss_mib(pid)
            post(server.url, images[:1])  # warm-up (lazy imports, first forward pass), not timed
            reference, seq_times = {}, []
            for name, data in images:
                start = time.perf_counter()
                status, body = post(server.url, [(name, data)])
                seq_times.append(time.perf_counter() - start)
                if status != 200 or "error" in body["records"][0]:
                    raise RuntimeError(f"baseline request for {name} failed: {status} {body}")
                reference[name] = body["records"][0]
            rss_warm = rss_mib(pid)

            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    samples.append(rss_mib(pid))
                    time.sleep(0.02)

            barrier = threading.Barrier(requests)

            def client(i: int) -> tuple[str, float]:
                name, data = images[i % len(images)]
                barrier.wait()
                start = time.perf_counter()
                status, body = post(server.url, [(name, data)])
                elapsed = time.perf_counter() - start
                if status == 200:
                    kind = "scored" if same_record(body["records"][0], reference[name]) else "wrong"
                elif status == 503 and str(body.get("error", "")).startswith("busy"):
                    kind = "busy"
                else:
                    kind = "failed"
                return kind, elapsed

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=requests) as pool:
                answers = list(pool.map(client, range(requests)))
            burst_s = time.perf_counter() - start
            done.set()
            sampler.join()
            peak = max([*samples, rss_mib(pid)])
            hwm = rss_mib(pid, "VmHWM")
        finally:
            code = server.stop()
        left = [str(p.relative_to(spool)) for p in Path(spool).rglob("*")]
    counts = {k: sum(1 for kind, _ in answers if kind == k) for k in ("scored", "busy", "wrong", "failed")}
    latency = sorted(t for kind, t in answers if kind == "scored")
    return {
        "requests": requests,
        "queue": queue,
        "answers": counts,
        "answered": counts["scored"] + counts["busy"],
        "burst_seconds": round(burst_s, 3),
        "scored_latency_s": {
            "median": round(statistics.median(latency), 3) if latency else None,
            "max": round(latency[-1], 3) if latency else None,
        },
        "sequential_images_per_s": round(len(seq_times) / sum(seq_times), 2),
        "burst_scored_images_per_s": round(counts["scored"] / burst_s, 2),
        "server_rss_mib": {
            "at_start": round(rss_start, 1),
            "after_warmup": round(rss_warm, 1),
            "peak_during_burst": round(peak, 1),
            "growth_during_burst": round(peak - rss_warm, 1),
            "high_water_mark": round(hwm, 1),
        },
        "server_exit_code": code,
        "temp_files_left": left,
        "reference": reference,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="concurrent requests in the burst")
    parser.add_argument("--queue", type=int, default=8, help="the server's --queue")
    parser.add_argument("--run", help="detector to serve (default: the demo architecture with random heads)")
    parser.add_argument("--threads", type=int, default=0, help="the server's --threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)

    from sefdata.assets import find_assets
    from sefmodel.predict import load_detector, predict_files

    assets = find_assets()
    if assets is None:
        parser.error("no shared assets: set SEF_ASSETS to a folder with photos/ and weights/")
    photos = sorted(p for p in (assets / "photos").iterdir() if p.suffix.lower() in (".png", ".jpg"))
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        run = args.run or demo_like_detector(Path(tmp) / "detector", assets)
        noise = Path(tmp) / "noise.png"
        noise.write_bytes(noise_png())
        files = [*photos, noise]
        images = [(p.name, p.read_bytes()) for p in files]
        result = run_load(run, images, args.requests, args.queue, ("--threads", str(args.threads)))
        # the API's records are sefmodel predict's (same files, same detector, batches of one as the server runs them)
        expected = {Path(r["path"]).name: r for r in predict_files(load_detector(run, "cpu"), files, batch_size=1)}
        mismatched = [n for n, r in result.pop("reference").items() if not same_record(r, expected[n] | {"path": n})]
    result.update({
        "images": len(images),
        "server_threads": args.threads or "torch default",
        "detector": "given" if args.run else "demo architecture (pretrained MobileNetV2, random heads)",
        "records_equal_to_predict": not mismatched,
        "mismatched": mismatched,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d"),
    })  # fmt: skip
    rss = result["server_rss_mib"]
    result["headline"] = {"metric": "server_peak_rss_growth_during_burst", "value": rss["growth_during_burst"],
                          "unit": "MiB"}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    a = result["answers"]
    left = len(result["temp_files_left"])
    print(f"{args.requests} concurrent requests: {a['scored']} scored, {a['busy']} busy, {a['wrong']} wrong, "
          f"{a['failed']} failed; records equal to predict: {not mismatched}; temp files left: {left}")  # fmt: skip
    print(f"server RSS {rss['after_warmup']} MiB after warm-up, peak {rss['peak_during_burst']} MiB during the burst: "
          f"+{rss['growth_during_burst']} MiB")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
