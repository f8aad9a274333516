"""Benchmark: what the daemon adds to refinement, and what batching across clients buys.

A randomly initialised CycleGAN refiner (width 16, 3 residual blocks, 64x64 crops) is exported
to a temporary model folder and served on loopback TCP by a ``DaemonServer`` thread.

1. Overhead: one client refines 16 crops through the daemon (encode, send, decode, queue,
   refine, reply) vs ``RefinerService.refine`` on the same crops in-process (the baseline).
2. Batching: 8 clients each ask for 2 crops at the same moment. With batching (wait up to
   20 ms, up to 64 crops per call) vs without (one model call per request: at most 2 crops
   per batch, no waiting). Reported as crops per second; the baseline is "without".

Run: ``python -m bench daemon``; JSON goes to ``bench/results/daemon.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import print_table, write_result
from protocol.messages import RefineReply, RefineRequest
from protocol.transport import Client
from refiner_daemon.models import ResnetGenerator
from refiner_daemon.server import DaemonServer, ServerConfig
from refiner_daemon.service import RefinerService, ServiceConfig
from refiner_daemon.training import ModelSpec, export_refiner

SIDE, CROPS, CLIENTS, CROPS_PER_CLIENT = 64, 16, 8, 2
REPEATS = 9


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
    write_result("daemon", {
        "workload": {"crop_side": SIDE, "crops_per_request": CROPS, "clients": CLIENTS,
                     "crops_per_client": CROPS_PER_CLIENT, "model": "cyclegan width 16, 3 blocks",
                     "device": "cpu", "torch_threads": 2, "repeats": REPEATS},
        "in_process_ms": in_process * 1e3,
        "via_daemon_ms": via_daemon * 1e3,
        "ratio_daemon_to_in_process": overhead_ratio,
        "baseline": "in-process RefinerService.refine; unbatched server for throughput",
        "throughput_crops_per_s": throughput,
        "batch_sizes": batch_sizes,
        "ratio_batched_to_unbatched_throughput": batching_ratio,
    })


if __name__ == "__main__":
    main()
