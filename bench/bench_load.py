"""LOAD-01 / LOAD-02: simulated agronomists against a launched app on loopback, bounded in time.

    python -m bench.bench_load                       # tiny model: measures the app, queue and store
    python -m bench.bench_load --model-delay 0.1     # + 0.1 s per prediction, like RELIABILITY fact 9

The app runs in its own process (``--serve``), so client threads do not share the server's interpreter.
LOAD-01: 5 and 20 users each run predict + correct loops; p50/p95 latency, errors, corrections saved.
LOAD-02: a burst of 4 x the queue's ``max_size`` joins at once; the excess must get "queue full" (HTTP 503)
quickly and every accepted request must finish. Results go to ``bench/results/load.json`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

_logger = logging.getLogger("bench.load")


# -- server side (child process) -------------------------------------------------------------------


def serve(data_dir: Path, port: int, queue_size: int, model_delay: float) -> None:
    """Seed, train once, and serve the app until killed (the child process of the benchmark)."""
    from ila_core.config import AppConfig
    from ila_core.ui import TEST_BACKBONE, DemoSpec, Studio, StudioOptions, build_app, launch_settings, queue_settings

    config = AppConfig(data_dir=data_dir, port=port, queue_size=queue_size)
    demo_set = DemoSpec(num_cultivars=4, image_size=96, train_per_class=6, holdout_per_class=2, pool_per_class=2)
    options = StudioOptions(backbone=TEST_BACKBONE, demo=demo_set, train_overrides=(("epochs", 2),))
    studio = Studio.open(config, options)
    if model_delay > 0:  # stand-in for a bigger backbone: every model call costs this much more
        real = studio.models.predict

        def slow(*args: Any, **kwargs: Any) -> Any:
            time.sleep(model_delay)
            return real(*args, **kwargs)

        studio.models.predict = slow  # type: ignore[method-assign]
    demo = build_app(config, studio=studio)
    demo.queue(**queue_settings(config)).launch(**launch_settings(config, studio, quiet=True))


# -- client side -----------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _wait_ready(url: str, timeout: float) -> None:
    import httpx
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    client = Client(url, verbose=False)
    try:
        while time.monotonic() < deadline:
            if any(v["serving"] for v in client.predict(api_name="/versions")):
                return
            time.sleep(1)
    finally:
        client.close()
    raise TimeoutError("the app did not serve a trained model in time")


def _images(folder: Path, count: int) -> list[Path]:
    from ila_core.data.synthetic import SyntheticConfig, generate

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, (_, image) in enumerate(
        generate(SyntheticConfig(num_cultivars=4, image_size=96, seed=3), count // 4 + 1, start_index=1000)
    ):
        if n >= count:
            break
        path = folder / f"load-{n:05d}.png"
        image.save(path)
        out.append(path)
    return out


def load_01(url: str, users: int, loops: int, images: list[Path]) -> dict[str, Any]:
    """``users`` clients each run ``loops`` predict + correct rounds at once."""
    from gradio_client import Client, handle_file

    predict_s: list[float] = []
    correct_s: list[float] = []
    errors: list[str] = []
    saved: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(users)

    def agronomist(me: int) -> None:
        client = Client(url, verbose=False)
        try:
            names = client.predict(api_name="/cultivars")
            start.wait()
            for i in range(loops):
                image = images[(me * loops + i) % len(images)]
                t0 = time.perf_counter()
                out = client.predict(handle_file(str(image)), api_name="/predict")
                t1 = time.perf_counter()
                cid = f"load:{uuid.uuid4().hex}"
                client.predict(out["image_id"], names[(me + i) % len(names)], cid, api_name="/correct")
                t2 = time.perf_counter()
                with lock:
                    predict_s.append(t1 - t0)
                    correct_s.append(t2 - t1)
                    saved.append((out["image_id"], cid))
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
        finally:
            client.close()

    t_start = time.perf_counter()
    threads = [threading.Thread(target=agronomist, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t_start
    stored = _count_saved(url, saved)
    return {
        "scenario": "LOAD-01", "users": users, "loops": loops, "requests": 2 * len(saved), "seconds": round(wall, 2),
        "p50_predict_s": _pct(predict_s, 0.5), "p95_predict_s": _pct(predict_s, 0.95),
        "p50_correct_s": _pct(correct_s, 0.5), "p95_correct_s": _pct(correct_s, 0.95),
        "errors": len(errors), "corrections_acknowledged": len(saved), "corrections_saved": stored,
        "error_samples": errors[:5],
    }  # fmt: skip


def _count_saved(url: str, saved: list[tuple[int, str]]) -> int:
    from gradio_client import Client

    client = Client(url, verbose=False)
    try:
        found = 0
        for image_id in sorted({i for i, _ in saved}):
            ids = {e["client_event_id"] for e in client.predict(image_id, api_name="/label_history")}
            found += sum(1 for i, cid in saved if i == image_id and cid in ids)
        return found
    finally:
        client.close()


def load_02(url: str, queue_size: int, images: list[Path]) -> dict[str, Any]:
    """A burst of ``4 * queue_size`` /predict joins at once: count accepted, 503-rejected and failed."""
    import httpx

    burst = 4 * queue_size
    with httpx.Client() as http:
        config = http.get(url + "config").json()
        index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "predict")
        files = []
        for path in images[:burst]:  # upload first: the burst measures the queue, not the uploads
            r = http.post(url + "gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/png")})
            files.append({"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}})
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    gate = threading.Barrier(burst)

    def one(n: int) -> None:
        session = uuid.uuid4().hex
        body = {"data": [files[n % len(files)]], "fn_index": index, "session_hash": session}
        with httpx.Client(timeout=120) as http:
            gate.wait()
            t0 = time.perf_counter()
            try:
                joined = http.post(url + "gradio_api/queue/join", json=body)
                if joined.status_code == 503:
                    outcome = "rejected"
                elif joined.status_code != 200:
                    outcome = f"http_{joined.status_code}"
                else:
                    outcome = "failed"
                    with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as r:
                        for line in r.iter_lines():
                            if line.startswith("data:"):
                                msg = json.loads(line[5:])
                                if msg.get("msg") == "process_completed":
                                    outcome = "ok" if msg.get("success") else "failed"
                                    break
            except httpx.HTTPError as exc:
                outcome = f"client_error:{type(exc).__name__}"
            with lock:
                results.append((outcome, time.perf_counter() - t0))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ok = [s for o, s in results if o == "ok"]
    rejected = [s for o, s in results if o == "rejected"]
    return {
        "scenario": "LOAD-02",
        "queue_max_size": queue_size,
        "burst": burst,
        "ok": len(ok),
        "rejected_queue_full": len(rejected),
        "other_errors": len(results) - len(ok) - len(rejected),
        "max_reject_s": round(max(rejected), 4) if rejected else None,
        "p50_reject_s": _pct(rejected, 0.5),
        "min_reject_s": round(min(rejected), 4) if rejected else None,
        "p50_ok_s": _pct(ok, 0.5),
        "p95_ok_s": _pct(ok, 0.95),
        "max_ok_s": round(max(ok), 4) if ok else None,
    }


def _table_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Uniform rows for the README table (one per operation)."""
    if r["scenario"] == "LOAD-01":
        saved = f"{r['corrections_saved']}/{r['corrections_acknowledged']} corrections saved"
        common = {"clients": r["users"], "requests": r["requests"] // 2, "errors": r["errors"]}
        return [
            {
                "scenario": "LOAD-01 predict",
                **common,
                "p50_s": r["p50_predict_s"],
                "p95_s": r["p95_predict_s"],
                "notes": "",
            },
            {
                "scenario": "LOAD-01 correct",
                **common,
                "p50_s": r["p50_correct_s"],
                "p95_s": r["p95_correct_s"],
                "notes": saved,
            },
        ]
    note = f"queue max {r['queue_max_size']}: {r['rejected_queue_full']} got 'queue full' within {r['max_reject_s']} s"
    return [{"scenario": "LOAD-02 burst", "clients": r["burst"], "requests": r["burst"], "errors": r["other_errors"],
             "p50_s": r["p50_ok_s"], "p95_s": r["p95_ok_s"], "notes": f"{r['ok']} ok; {note}"}]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run LOAD-01 (5 and 20 users) and LOAD-02 against a child app process; write bench/results/load.json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", nargs=2, metavar=("DATA_DIR", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, nargs="*", default=[5, 20], help="LOAD-01 client counts (none: skip it)")
    p.add_argument("--loops", type=int, default=5, help="predict + correct rounds per user")
    p.add_argument("--queue-size", type=int, default=16)
    p.add_argument("--model-delay", type=float, default=0.0, help="extra seconds per model call (a bigger backbone)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "load.json")
    args = p.parse_args(argv)
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.queue_size, args.model_delay)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ui_support import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="ila-load-") as tmp:
        cmd = [sys.executable, "-m", "bench.bench_load", "--serve", str(Path(tmp) / "data"), str(port),
               "--queue-size", str(args.queue_size), "--model-delay", str(args.model_delay)]  # fmt: skip
        child = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
        try:
            _wait_ready(url, timeout=180)
            rss_start = _rss_mb(child.pid)
            images = _images(Path(tmp) / "images", max(args.users, default=0) * args.loops + 4 * args.queue_size)
            rows = []
            for n in args.users:
                _logger.info("LOAD-01 with %d users", n)
                rows.append(load_01(url, n, args.loops, images[: max(args.users, default=0) * args.loops]))
            _logger.info("LOAD-02 burst of %d", 4 * args.queue_size)
            rows.append(load_02(url, args.queue_size, images[-4 * args.queue_size :]))
            time.sleep(2)
            rss_end = _rss_mb(child.pid)
        finally:
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
    from bench.common import machine

    model = "tiny test_vit" + (f" + {args.model_delay} s per model call" if args.model_delay else "")
    result = {
        "title": f"Load on loopback ({model}; client and server on the same machine)",
        "machine": machine(), "server_rss_mb": {"after_start": rss_start, "after_runs": rss_end},
        "rows": [line for r in rows for line in _table_rows(r)],
        "details": [{k: v for k, v in r.items() if k != "error_samples"} for r in rows],
        "error_samples": [s for r in rows for s in r.get("error_samples", [])][:10],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps(result, indent=2))
    bad = [r for r in rows if r.get("errors") or r.get("other_errors")]
    lost = [r for r in rows if r["scenario"] == "LOAD-01" and r["corrections_saved"] != r["corrections_acknowledged"]]
    return 1 if bad or lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
