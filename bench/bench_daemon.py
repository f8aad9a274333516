"""Benchmark: what the daemon adds to refinement, what batching buys, and whether it leaks.

A randomly initialised CycleGAN refiner (width 16, 3 residual blocks, 64x64 crops) is exported
to a temporary model folder.

1. Overhead: one client refines 16 crops through a ``DaemonServer`` thread (encode, send,
   decode, queue, refine, reply) vs ``RefinerService.refine`` on the same crops in-process
   (the baseline).
2. Burst: 8 clients each ask for 2 crops at the same moment. With batching (wait up to
   20 ms, up to 64 crops per call) vs without (one model call per request: at most 2 crops
   per batch, no waiting). Reported as crops per second; the baseline is "without".
3. Concurrency: a daemon process (``refiner-daemon serve``) and 1, 4 or 8 client threads,
   each sending 2-crop requests one after another for a fixed number of requests; with
   batching on (waiting 5 ms for company, or not waiting: requests that queue while the model
   is busy form the next batch) and off (one model call per request). Three rounds, the
   settings' daemons running side by side and measured in turn; median throughput. Throughput and per-request latency (p50, p99); baseline: batching
   off at the same client count.
4. Memory: a daemon process serving a tiny refiner answers 10,000 one-crop requests (16x16);
   its resident set size (``/proc/PID/status`` VmRSS) after the first 1,000 is the baseline
   for the RSS after all 10,000 (the goal: within 5 %).
5. Dataset refinement: 6 synthetic 1024x1024 frames with 5 drawn people each, refined
   through a daemon process with 128x128 crops by ``refine_dataset`` (the next frame cut and
   the previous one written while the daemon works) vs the sequential loop (read, cut,
   refine, paste back, write; the baseline); the pixels must be identical.

Run: ``python -m bench daemon``; JSON goes to ``bench/results/daemon.json``.
"""

from __future__ import annotations

import os

# The OpenMP wait policy `refiner-daemon serve` uses (refiner_daemon/cli.py), so the in-process
# daemon thread of parts 1-2 is not starved by spinning workers. It takes effect only if torch
# is not imported yet in this process (true for `python -m bench daemon`).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.report import print_table, write_result
from protocol.annotations import load_rendered_coco
from protocol.coco import rle_encode
from protocol.fileio import atomic_write_bytes, atomic_write_json
from protocol.messages import RefineReply, RefineRequest
from protocol.transport import Client
from refiner_daemon.refiner.batch_refine import (
    BatchRefineConfig,
    RefinerIdentity,
    refine_dataset,
    refine_frame,
)
from refiner_daemon.refiner.networks import ResnetGenerator
from refiner_daemon.refiner.training import ModelSpec, export_refiner
from refiner_daemon.serve.server import DaemonServer, ServerConfig
from refiner_daemon.serve.service import RefinerService, ServiceConfig

SIDE, CROPS, CLIENTS, CROPS_PER_CLIENT = 64, 16, 8, 2
REPEATS = 9
CLIENT_COUNTS = (1, 4, 8)
REQUESTS_PER_CLIENT = {1: 40, 4: 20, 8: 15}  # about the same total work at each count
CONCURRENCY_ROUNDS = 3
MEMORY_REQUESTS, MEMORY_FIRST, MEMORY_SIDE, MEMORY_WINDOW = 10_000, 1_000, 16, 16
DATASET_FRAMES, DATASET_SIDE, DATASET_PEOPLE, DATASET_CROP, DATASET_ROUNDS = 6, 1024, 5, 128, 3


def _serve(service: RefinerService, config: ServerConfig
           ) -> tuple[DaemonServer, threading.Event, threading.Thread]:
    server = DaemonServer(service, config)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
    thread.start()
    return server, stop, thread


def _median_seconds(call, repeats: int = REPEATS) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _burst(clients: list[Client], crops: np.ndarray) -> None:
    """Every client sends at once, then all replies are collected."""
    for client in clients:
        client.send_request(RefineRequest(model="bench", crops=crops))
    for client in clients:
        reply = client.poll_reply(timeout_ms=60_000)
        assert isinstance(reply, RefineReply), reply


@contextmanager
def daemon_process(models: Path, state: Path, *options: str) -> Iterator[tuple[str, int]]:
    """``refiner-daemon serve`` as a separate process on a free loopback port:
    yields ``(endpoint, pid)`` and stops it (SIGTERM) afterwards."""
    argv = [sys.executable, "-m", "refiner_daemon.cli", "serve", "--bind", "tcp://127.0.0.1:*",
            "--models", str(models), "--state", str(state), "--device", "cpu", *options]
    env = {"OMP_NUM_THREADS": "2", **os.environ}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env)
    try:
        banner = process.stdout.readline() if process.stdout else ""
        if not banner.startswith("refiner daemon on "):
            raise RuntimeError(f"the daemon did not start: {banner!r}")
        yield banner.split()[3].rstrip(";"), process.pid
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout:
            process.stdout.close()


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def _closed_loop_client(endpoint: str, crops: np.ndarray, requests: int,
                        latencies: list[float], ready: threading.Barrier) -> None:
    """One client thread: a request, its reply, the next request, ``requests`` times."""
    with Client(endpoint, timeout_ms=120_000, retries=0) as client:
        client.request(RefineRequest(model="bench", crops=crops))  # connect, warm up
        ready.wait()  # the clock starts when every client is connected
        for _ in range(requests):
            started = time.perf_counter()
            reply = client.request(RefineRequest(model="bench", crops=crops))
            latencies.append(time.perf_counter() - started)
            assert isinstance(reply, RefineReply), reply


def _closed_loop_run(endpoint: str, crops: np.ndarray, clients: int, requests: int
                     ) -> tuple[float, list[float]]:
    """``clients`` threads, ``requests`` each: (wall seconds, every latency in seconds)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    ready = threading.Barrier(clients + 1, timeout=300)
    threads = [threading.Thread(target=_closed_loop_client,
                                args=(endpoint, crops, requests, latencies[i], ready))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()  # all connected, and the model loaded by the first request
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    flat = [value for client in latencies for value in client]
    if len(flat) != clients * requests:
        raise RuntimeError(f"{clients} clients: {len(flat)} replies of {clients * requests}")
    return seconds, flat


def measure_concurrency(models: Path, state: Path, crops: np.ndarray) -> list[dict]:
    """Throughput and latency with 1, 4, 8 closed-loop clients, batching on and off.

    One daemon process per setting, all running at once; the cells are measured round-robin,
    ``CONCURRENCY_ROUNDS`` times, so load from other processes hits every setting alike.
    Throughput: median over the rounds; latency percentiles: over all rounds' requests.
    """
    settings = {
        "batching on (wait 5 ms, <= 64 crops)": ("--batch-wait-ms", "5", "--batch-crops", "64"),
        # No waiting: whatever queued while the model was busy forms the next batch.
        "batching on (no wait, <= 64 crops)": ("--batch-wait-ms", "0", "--batch-crops", "64"),
        "batching off (one call per request)": ("--batch-wait-ms", "0", "--batch-crops",
                                                str(crops.shape[0])),
    }
    throughputs: dict[tuple[str, int], list[float]] = {}
    latencies: dict[tuple[str, int], list[float]] = {}
    with ExitStack() as stack:
        endpoints = {name: stack.enter_context(daemon_process(
            models, state / str(index), "--max-queue", "64", *options))[0]
            for index, (name, options) in enumerate(settings.items())}
        for _ in range(CONCURRENCY_ROUNDS):
            for clients in CLIENT_COUNTS:
                for name, endpoint in endpoints.items():
                    requests = REQUESTS_PER_CLIENT[clients]
                    seconds, flat = _closed_loop_run(endpoint, crops, clients, requests)
                    throughputs.setdefault((name, clients), []).append(
                        len(flat) * crops.shape[0] / seconds)
                    latencies.setdefault((name, clients), []).extend(flat)
    rows = []
    for (name, clients), values in throughputs.items():
        flat_ms = np.array(latencies[(name, clients)]) * 1e3
        rows.append({"server": name, "clients": clients, "requests": int(flat_ms.size),
                     "crops_per_request": int(crops.shape[0]),
                     "crops_per_s": float(statistics.median(values)),
                     "crops_per_s_rounds": [round(v, 1) for v in values],
                     "p50_ms": float(np.percentile(flat_ms, 50)),
                     "p99_ms": float(np.percentile(flat_ms, 99))})
    rows.sort(key=lambda row: (list(settings).index(row["server"]), row["clients"]))
    for row in rows:  # baseline: batching off, same number of clients
        off = next(r for r in rows if r["clients"] == row["clients"] and "off" in r["server"])
        row["throughput_vs_batching_off"] = row["crops_per_s"] / off["crops_per_s"]
    return rows


def measure_memory(models: Path, state: Path) -> dict:
    """RSS of a daemon process after 1,000 and after 10,000 one-crop requests."""
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (1, MEMORY_SIDE, MEMORY_SIDE, 3), dtype=np.uint8)
    samples: dict[int, float] = {}
    with daemon_process(models, state) as (endpoint, pid), \
            Client(endpoint, timeout_ms=120_000, retries=0) as client:
        answered = sent = 0
        started = time.perf_counter()
        while answered < MEMORY_REQUESTS:
            while sent < MEMORY_REQUESTS and sent - answered < MEMORY_WINDOW:
                client.send_request(RefineRequest(model="tiny", crops=crops,
                                                  meta=({"i": sent},)))
                sent += 1
            reply = client.poll_reply(timeout_ms=120_000)
            if not isinstance(reply, RefineReply):
                raise TypeError(f"request {answered}: expected a refine_reply, got {reply}")
            answered += 1
            if answered % MEMORY_FIRST == 0:
                samples[answered] = rss_mib(pid)
        seconds = time.perf_counter() - started
    first, last = samples[MEMORY_FIRST], samples[MEMORY_REQUESTS]
    return {"requests": MEMORY_REQUESTS, "crop_side": MEMORY_SIDE, "seconds": seconds,
            "requests_per_s": MEMORY_REQUESTS / seconds,
            f"rss_mib_after_{MEMORY_FIRST}": first, f"rss_mib_after_{MEMORY_REQUESTS}": last,
            "rss_ratio": last / first, "within_5_percent": abs(last / first - 1.0) <= 0.05,
            "rss_mib_every_1000": [round(samples[n], 1) for n in sorted(samples)]}


def make_render_like_dataset(folder: Path, frames: int, side: int, people: int,
                             seed: int) -> Path:
    """A rendered-format dataset (coco.json, images/, masks/, frames/) of smooth "rooms" with
    ``people`` drawn people each: capsule bodies pointing at the image centre, round heads."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    centre = (side - 1) / 2.0
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    for index in range(frames):
        stem = f"{index:06d}"
        room = np.stack([xs / side * 180 + 40, ys / side * 120 + 60,
                         np.full_like(xs, 128.0)], axis=-1)
        room += rng.normal(0, 6, room.shape)
        image = np.clip(room, 0, 255).astype(np.uint8)
        instance = np.zeros((side, side), dtype=np.uint16)
        heads = []
        for person in range(1, people + 1):
            angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.4) * side
            head = np.array([centre + radius * np.cos(angle), centre + radius * np.sin(angle)])
            towards = (centre - head) / np.linalg.norm(centre - head)
            length, width = 0.09 * side, 0.025 * side
            t = np.clip(((xs - head[0]) * towards[0] + (ys - head[1]) * towards[1]) / length,
                        0, 1)
            body = np.hypot(xs - head[0] - t * length * towards[0],
                            ys - head[1] - t * length * towards[1]) <= width
            body |= np.hypot(xs - head[0], ys - head[1]) <= width * 0.9
            instance[body] = person
            image[body] = rng.integers(30, 220, 3)
            heads.append(head)
        for person, head in enumerate(heads, start=1):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": index, "category_id": 1,
                "instance_id": person, "head_point": [float(head[0]), float(head[1])],
                "segmentation": rle_encode(instance == person)})
        for sub, array in (("images", image), ("masks", instance)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / sub / f"{stem}.png")
        atomic_write_json(folder / "frames" / f"{stem}.json", {"index": index})
        coco["images"].append({"id": index, "file_name": f"images/{stem}.png", "width": side,
                               "height": side, "mask_file": f"masks/{stem}.png"})
    atomic_write_json(folder / "coco.json", coco)
    return folder


def _refine_sequentially(source: Path, target: Path, refine_fn, config: BatchRefineConfig
                         ) -> None:
    """The baseline: read, cut, refine, paste back and write each frame in turn."""
    for image in load_rendered_coco(source):
        pixels = np.asarray(Image.open(image.path).convert("RGB"))
        refined, _, _ = refine_frame(pixels, image, refine_fn, config)
        buffer = io.BytesIO()
        Image.fromarray(refined).save(buffer, format="PNG")
        atomic_write_bytes(target / "images" / image.path.name, buffer.getvalue())


def measure_dataset_refine(models: Path, state: Path, work: Path) -> dict:
    """``refine_dataset`` (pipelined) vs the sequential loop, through a daemon process."""
    source = make_render_like_dataset(work / "render", DATASET_FRAMES, DATASET_SIDE,
                                      DATASET_PEOPLE, seed=3)
    config = BatchRefineConfig(crop_size=DATASET_CROP)
    seconds: dict[str, list[float]] = {"sequential (baseline)": [], "pipelined refine_dataset": []}
    with daemon_process(models, state) as (endpoint, _), \
            Client(endpoint, timeout_ms=120_000, retries=0) as client:
        def refine_fn(crops: np.ndarray) -> np.ndarray:
            return client.refine("bench", crops).images

        sha = client.refine("bench", np.zeros((1, DATASET_CROP, DATASET_CROP, 3), np.uint8)
                            ).model_sha256
        identity = RefinerIdentity("bench", sha, endpoint=endpoint)
        for round_index in range(DATASET_ROUNDS):  # alternate, so load hits both alike
            started = time.perf_counter()
            _refine_sequentially(source, work / f"sequential{round_index}", refine_fn, config)
            seconds["sequential (baseline)"].append(time.perf_counter() - started)
            started = time.perf_counter()
            refine_dataset(source, work / f"pipelined{round_index}", refine_fn, identity, config,
                           progress=False)
            seconds["pipelined refine_dataset"].append(time.perf_counter() - started)
    same = all(np.array_equal(np.asarray(Image.open(work / "sequential0" / "images" / name)),
                              np.asarray(Image.open(work / "pipelined0" / "images" / name)))
               for name in sorted(p.name for p in (source / "images").iterdir()))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {"frames": DATASET_FRAMES, "side": DATASET_SIDE, "people_per_frame": DATASET_PEOPLE,
            "crop": DATASET_CROP, "rounds": DATASET_ROUNDS,
            "seconds_median": medians, "seconds_rounds": seconds,
            "speedup_pipelined_vs_sequential": (medians["sequential (baseline)"]
                                                / medians["pipelined refine_dataset"]),
            "identical_pixels": same}


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        spec = ModelSpec(width=16, n_blocks=3, crop_size=(SIDE, SIDE))
        export_refiner(models / "bench.pt", spec, ResnetGenerator(width=16, n_blocks=3),
                       name="bench")
        service = RefinerService(ServiceConfig(models_dir=str(models), state_dir=tmp,
                                               device="cpu"))
        crops = rng.integers(0, 256, (CROPS, SIDE, SIDE, 3), dtype=np.uint8)
        service.refine("bench", crops)  # load and warm up

        # 1. overhead of the daemon path for one request; the two are timed alternately so
        #    that load from other processes hits both alike.
        server, stop, thread = _serve(service, ServerConfig(bind="tcp://127.0.0.1:*",
                                                            batch_wait_ms=0))
        with Client(server.endpoint, timeout_ms=60_000, retries=0) as client:
            client.request(RefineRequest(model="bench", crops=crops))
            in_process_runs, daemon_runs = [], []
            for _ in range(REPEATS):
                in_process_runs.append(_median_seconds(
                    lambda: service.refine("bench", crops), repeats=1))
                daemon_runs.append(_median_seconds(
                    lambda: client.request(RefineRequest(model="bench", crops=crops)),
                    repeats=1))
        in_process, via_daemon = statistics.median(in_process_runs), statistics.median(daemon_runs)
        stop.set()
        thread.join()
        server.close()

        # 2. batching across clients
        small = crops[:CROPS_PER_CLIENT].copy()
        throughput: dict[str, float] = {}
        batch_sizes: dict[str, list[int]] = {}
        settings = {
            "batched (wait 20 ms, <= 64 crops)": ServerConfig(
                bind="tcp://127.0.0.1:*", batch_wait_ms=20, batch_max_crops=64),
            "unbatched (one call per request)": ServerConfig(
                bind="tcp://127.0.0.1:*", batch_wait_ms=0, batch_max_crops=CROPS_PER_CLIENT),
        }
        for name, config in settings.items():
            server, stop, thread = _serve(service, config)
            clients = [Client(server.endpoint, timeout_ms=60_000, retries=0)
                       for _ in range(CLIENTS)]
            _burst(clients, small)  # connect and warm up
            seconds = _median_seconds(lambda c=clients: _burst(c, small), repeats=REPEATS)
            throughput[name] = CLIENTS * CROPS_PER_CLIENT / seconds
            batch_sizes[name] = server.batch_sizes[-CLIENTS:]
            for client in clients:
                client.close()
            stop.set()
            thread.join()
            server.close()
        service.close()

        # 3 and 4: daemon processes, so client threads do not share its interpreter.
        state = Path(tmp) / "state"
        concurrency = measure_concurrency(models, state, small)
        export_refiner(models / "tiny.pt", ModelSpec(width=4, n_blocks=1,
                                                     crop_size=(MEMORY_SIDE, MEMORY_SIDE)),
                       ResnetGenerator(width=4, n_blocks=1), name="tiny")
        memory = measure_memory(models, state)
        dataset_refine = measure_dataset_refine(models, state, Path(tmp))

    overhead_ratio = via_daemon / in_process
    batched, unbatched = throughput.values()
    batching_ratio = batched / unbatched
    print_table(f"refine {CROPS} crops of {SIDE}x{SIDE} (CycleGAN width 16, 3 blocks, CPU, "
                f"2 threads), median of {REPEATS}",
                ["path", "ms"], [["in-process RefinerService.refine (baseline)", in_process * 1e3],
                                 ["through the daemon (loopback tcp)", via_daemon * 1e3]])
    print_table(f"{CLIENTS} clients x {CROPS_PER_CLIENT} crops at once",
                ["server", "crops/s", "last batch sizes"],
                [[name, value, batch_sizes[name]] for name, value in throughput.items()])
    print_table("ratios", ["comparison", "ratio"], [
        ["daemon / in-process time", overhead_ratio],
        ["batched / unbatched throughput", batching_ratio],
    ])
    print_table(f"closed-loop clients, {CROPS_PER_CLIENT} crops of {SIDE}x{SIDE} per request, "
                f"daemon process, median of {CONCURRENCY_ROUNDS} rounds", ["server", "clients", "requests", "crops/s", "p50 ms",
                                   "p99 ms", "vs off"],
                [[r["server"], r["clients"], r["requests"], r["crops_per_s"], r["p50_ms"],
                  r["p99_ms"], r["throughput_vs_batching_off"]] for r in concurrency])
    print_table(f"daemon RSS over {MEMORY_REQUESTS} requests (1 crop {MEMORY_SIDE}x{MEMORY_SIDE}, "
                "width-4 refiner)", ["measure", "value"],
                [[key, value] for key, value in memory.items()])
    print_table(f"refine a dataset of {DATASET_FRAMES} frames {DATASET_SIDE}x{DATASET_SIDE}, "
                f"{DATASET_PEOPLE} people each, {DATASET_CROP}px crops, daemon process, median "
                f"of {DATASET_ROUNDS}", ["client", "s"],
                [[name, value] for name, value in dataset_refine["seconds_median"].items()]
                + [["speed-up", dataset_refine["speedup_pipelined_vs_sequential"]],
                   ["identical pixels", dataset_refine["identical_pixels"]]])
    write_result("daemon", {
        "workload": {"crop_side": SIDE, "crops_per_request": CROPS, "clients": CLIENTS,
                     "crops_per_client": CROPS_PER_CLIENT, "model": "cyclegan width 16, 3 blocks",
                     "device": "cpu", "torch_threads": 2, "repeats": REPEATS,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")},
        "in_process_ms": in_process * 1e3,
        "via_daemon_ms": via_daemon * 1e3,
        "ratio_daemon_to_in_process": overhead_ratio,
        "baseline": "in-process RefinerService.refine; unbatched server for throughput",
        "throughput_crops_per_s": throughput,
        "batch_sizes": batch_sizes,
        "ratio_batched_to_unbatched_throughput": batching_ratio,
        "concurrency": concurrency,
        "concurrency_baseline": "batching off at the same client count",
        "memory": memory,
        "memory_baseline": f"daemon RSS after the first {MEMORY_FIRST} requests",
        "dataset_refine": dataset_refine,
        "dataset_refine_baseline": "sequential read, cut, refine, paste, write per frame",
    })


if __name__ == "__main__":
    main()
