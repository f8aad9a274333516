"""The refiner service (models, refinement) and the daemon server over real loopback sockets:
handshake, refine with real tiny refiners, batching across clients, the busy queue, jobs and
their event stream, and the ``refiner-daemon`` CLI (keygen, serve, status)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_daemon_jobs import CountingTrainer

from protocol.errors import RemoteError
from protocol.messages import (
    Capabilities,
    ErrorReply,
    HandshakeReply,
    JobList,
    JobListReply,
    JobProgress,
    JobQuery,
    JobStart,
    JobStatus,
    JobSubscribe,
    RefineReply,
    RefineRequest,
)
from protocol.transport import Client
from protocol.version import PROTOCOL_VERSION
from refiner_daemon import cli
from refiner_daemon.refiner.networks import AttentionNet, ResnetGenerator
from refiner_daemon.refiner.training import ModelSpec, export_refiner
from refiner_daemon.serve.server import DaemonServer, ServerConfig
from refiner_daemon.serve.service import RefinerService, ServiceConfig, ServiceError

torch.set_num_threads(2)
RNG = np.random.default_rng(3)


def _crops(count: int, side: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (count, side, side, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real, tiny, randomly initialised refiners: a CycleGAN and an AGGAN."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    spec = ModelSpec(width=4, n_blocks=1, crop_size=(32, 32))
    export_refiner(folder / "tiny.pt", spec, ResnetGenerator(width=4, n_blocks=1), name="tiny")
    aggan = ModelSpec(architecture="aggan", width=4, n_blocks=1, attention_width=4,
                      crop_size=(32, 32))
    export_refiner(folder / "tiny_att.pt", aggan, ResnetGenerator(width=4, n_blocks=1),
                   AttentionNet(width=4), name="tiny_att")
    return folder


@dataclass
class _Output:
    images: np.ndarray
    attention: np.ndarray | None


class InvertingModel:
    """A stand-in refiner (test only): inverts the crops and records each batch size."""

    def __init__(self, name: str, delay_s: float = 0.0) -> None:
        self.name, self.sha256, self.device = name, "0" * 64, "cpu"
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []

    def refine(self, crops: np.ndarray) -> _Output:
        self.batch_sizes.append(crops.shape[0])
        time.sleep(self.delay_s)
        return _Output(255 - crops, None)


def _stand_in_service(tmp_path: Path, delay_s: float = 0.0, **options) -> tuple[
        RefinerService, dict[str, InvertingModel]]:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        (models / f"{name}.pt").write_bytes(b"stand-in")
    loaded: dict[str, InvertingModel] = {}

    def loader(path: Path, device: str) -> InvertingModel:
        loaded[path.stem] = InvertingModel(path.stem, delay_s)
        return loaded[path.stem]

    config = ServiceConfig(models_dir=str(models), state_dir=str(tmp_path / "state"),
                           device="cpu", **options)
    return RefinerService(config, model_loader=loader,
                          trainers={"train_refiner": CountingTrainer()}), loaded


@pytest.fixture()
def serve():
    """Start a DaemonServer on a free loopback port in a thread; stop it afterwards."""
    running: list[tuple[DaemonServer, threading.Event, threading.Thread]] = []

    def start(service: RefinerService, **options) -> DaemonServer:
        server = DaemonServer(service, ServerConfig(bind="tcp://127.0.0.1:*", poll_ms=10,
                                                    **options))
        stop = threading.Event()
        thread = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
        thread.start()
        running.append((server, stop, thread))
        return server

    yield start
    for server, stop, thread in running:
        stop.set()
        thread.join(5)
        server.close()
        server.service.close()


@pytest.fixture()
def client_for() -> Iterator:
    clients: list[Client] = []

    def make(server: DaemonServer, timeout_ms: int = 5000) -> Client:
        clients.append(Client(server.endpoint, timeout_ms=timeout_ms, retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


# ---- service, in-process


def test_service_lists_loads_evicts_and_unloads_models(tmp_path: Path) -> None:
    service, loaded = _stand_in_service(tmp_path, max_loaded_models=2)
    try:
        assert service.available_models() == ["a", "b", "c"]
        for name in ("a", "b", "c"):
            service.load_model(name)
        assert service.loaded_models() == ["b", "c"]  # "a" was least recently used
        assert set(loaded) == {"a", "b", "c"}  # each was loaded through the loader once
        assert service.unload_model("b") and not service.unload_model("b")
        with pytest.raises(ServiceError, match="no model 'zzz'") as info:
            service.load_model("zzz")
        assert info.value.code == "unknown_model" and "['a', 'b', 'c']" in info.value.hint
        with pytest.raises(ServiceError, match="invalid model name"):
            service.load_model("../a")
    finally:
        service.close()


def test_service_refines_with_real_models(tmp_path: Path, models_dir: Path) -> None:
    from refiner_daemon.refiner.inference import Refiner

    service = RefinerService(ServiceConfig(models_dir=str(models_dir),
                                           state_dir=str(tmp_path), device="cpu"))
    try:
        crops = _crops(3)
        refined = service.refine("tiny", crops)
        direct = Refiner.load(models_dir / "tiny.pt", device="cpu")
        assert refined.model_sha256 == direct.sha256
        assert refined.images.shape == crops.shape and refined.attention is None
        difference = np.abs(refined.images.astype(int) - direct.refine(crops).images.astype(int))
        assert difference.max() <= 1
        with_attention = service.refine("tiny_att", crops)
        assert with_attention.attention.shape == (3, 32, 32)
        assert with_attention.attention.dtype == np.float32
        assert 0 <= with_attention.attention.min() <= with_attention.attention.max() <= 1
        with pytest.raises(ServiceError, match="cannot refine crops") as refused:
            service.refine("tiny", _crops(2, side=2))  # the generator needs sides >= 4
        assert refused.value.code == "bad_config"  # the request's fault, not the daemon's
        caps = service.capabilities()
        assert caps.models == ("tiny", "tiny_att") and set(caps.loaded_models) == {"tiny",
                                                                                   "tiny_att"}
    finally:
        service.close()


# ---- server over sockets


def test_handshake_and_refine_over_the_wire(tmp_path: Path, models_dir: Path, serve,
                                            client_for) -> None:
    service = RefinerService(ServiceConfig(models_dir=str(models_dir),
                                           state_dir=str(tmp_path), device="cpu"))
    server = serve(service)
    client = client_for(server)
    hello = client.handshake("test", "0")
    assert isinstance(hello, HandshakeReply) and hello.protocol_version == PROTOCOL_VERSION
    assert isinstance(hello.capabilities, Capabilities)
    assert hello.capabilities.models == ("tiny", "tiny_att") and hello.capabilities.device == "cpu"
    crops = _crops(4)
    meta = tuple({"person": i} for i in range(4))
    reply = client.request(RefineRequest(model="tiny_att", crops=crops, meta=meta))
    assert isinstance(reply, RefineReply) and reply.meta == meta
    expected = service.refine("tiny_att", crops)
    assert np.abs(reply.images.astype(int) - expected.images.astype(int)).max() <= 1
    assert reply.attention.shape == (4, 32, 32) and reply.model_sha256 == expected.model_sha256
    with pytest.raises(RemoteError, match="unknown_model") as info:
        client.request(RefineRequest(model="missing", crops=crops))
    assert "tiny" in info.value.hint


def test_requests_from_two_clients_share_one_batch(tmp_path: Path, serve, client_for) -> None:
    service, loaded = _stand_in_service(tmp_path)
    server = serve(service, batch_wait_ms=300, batch_max_crops=64)
    first, second = client_for(server), client_for(server)
    crops_1, crops_2 = _crops(3), _crops(5)
    id_1 = first.send_request(RefineRequest(model="a", crops=crops_1,
                                            meta=[{"c": 1}] * 3))
    id_2 = second.send_request(RefineRequest(model="a", crops=crops_2))
    reply_1, reply_2 = first.poll_reply(5000), second.poll_reply(5000)
    assert loaded["a"].batch_sizes == [8]  # one model call for both requests
    assert reply_1.request_id == id_1 and reply_2.request_id == id_2
    np.testing.assert_array_equal(reply_1.images, 255 - crops_1)
    np.testing.assert_array_equal(reply_2.images, 255 - crops_2)
    assert reply_1.meta == ({"c": 1},) * 3


def test_batches_respect_the_crop_bound_and_the_crop_size(tmp_path: Path, serve,
                                                          client_for) -> None:
    service, loaded = _stand_in_service(tmp_path)
    server = serve(service, batch_wait_ms=300, batch_max_crops=4)
    client = client_for(server)
    sent = [client.send_request(RefineRequest(model="a", crops=_crops(n, side)))
            for n, side in ((3, 32), (3, 32), (2, 16))]
    replies = {client.poll_reply(5000).request_id for _ in sent}
    assert replies == set(sent)
    # 3+3 > 4 crops, and 16-pixel crops never share a batch with 32-pixel ones.
    assert sorted(loaded["a"].batch_sizes) == [2, 3, 3]


def test_a_full_queue_answers_busy_with_a_retry_hint(tmp_path: Path, serve, client_for) -> None:
    service, loaded = _stand_in_service(tmp_path, delay_s=0.3)
    server = serve(service, max_queue=1, batch_wait_ms=0, batch_max_crops=2)
    client = client_for(server)
    sent = [client.send_request(RefineRequest(model="b", crops=_crops(2))) for _ in range(5)]
    replies = [client.poll_reply(5000) for _ in sent]
    assert {reply.request_id for reply in replies} == set(sent)  # one answer each
    busy = [r for r in replies if isinstance(r, ErrorReply)]
    done = [r for r in replies if isinstance(r, RefineReply)]
    assert busy and done
    assert all(r.code == "busy" and r.retry_after_ms > 0 and "retry" in r.hint for r in busy)
    assert server.stats["busy"] == len(busy)
    assert sum(loaded["b"].batch_sizes) == 2 * len(done)  # busy requests never reached the model


def test_client_refine_splits_by_the_limit_and_retries_busy_answers(
        tmp_path: Path, serve) -> None:
    from protocol.limits import Limits

    service, loaded = _stand_in_service(tmp_path, delay_s=0.05)
    server = serve(service, max_queue=1, batch_wait_ms=0, batch_max_crops=3)
    crops = _crops(10)
    meta = [{"i": i} for i in range(10)]
    with Client(server.endpoint, timeout_ms=5000, retries=0,
                limits=Limits(max_crops=3)) as client:
        result = client.refine("a", crops, meta=meta)
        with pytest.raises(RemoteError, match="unknown_model"):
            client.refine("nope", crops)
    np.testing.assert_array_equal(result.images, 255 - crops)  # all 10, in order
    assert result.meta == tuple(meta) and result.attention is None
    assert sorted(loaded["a"].batch_sizes) == [1, 3, 3, 3]  # chunks of max_crops = 3
    assert server.stats["busy"] >= 1  # four chunks at once against a queue of one


def test_daemon_answers_while_a_long_batch_runs(tmp_path: Path, serve, client_for) -> None:
    service, loaded = _stand_in_service(tmp_path, delay_s=2.0)
    server = serve(service, batch_wait_ms=0)
    refining, asking = client_for(server), client_for(server)
    refine_id = refining.send_request(RefineRequest(model="c", crops=_crops(2)))
    deadline = time.monotonic() + 5
    while not loaded.get("c") or not loaded["c"].batch_sizes:  # the batch has started
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.perf_counter()
    assert asking.handshake().capabilities.loaded_models == ("c",)
    assert time.perf_counter() - started < 1.5  # not stuck behind the 2 s model call
    reply = refining.poll_reply(timeout_ms=5000)
    assert isinstance(reply, RefineReply) and reply.request_id == refine_id
    assert time.perf_counter() - started > 1.0  # the batch really was still running


def test_jobs_over_the_wire_with_an_event_stream(tmp_path: Path, serve, client_for) -> None:
    service, _ = _stand_in_service(tmp_path)
    service.jobs.trainers["train_refiner"] = CountingTrainer(step_s=0.01)
    server = serve(service)
    client = client_for(server)
    status = client.request(JobStart(kind="train_refiner", config={"steps": 20}))
    assert isinstance(status, JobStatus) and status.job.state in ("queued", "running")
    job_id = status.job.job_id
    subscription = client.request(JobSubscribe(job_id=job_id))
    assert isinstance(subscription, JobStatus)
    events: list[JobProgress] = []
    deadline = time.monotonic() + 10
    while not events or events[-1].state != "succeeded":
        assert time.monotonic() < deadline, "the job's events stopped"
        message = client.poll_reply(timeout_ms=200)
        if isinstance(message, JobProgress):
            events.append(message)
    seqs = [event.seq for event in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e.event["step"] for e in events if "step" in e.event][-1] == 20
    assert client.request(JobQuery(job_id=job_id)).job.state == "succeeded"
    listing = client.request(JobList())
    assert isinstance(listing, JobListReply) and [j.job_id for j in listing.jobs] == [job_id]
    with pytest.raises(RemoteError, match="unknown_job"):
        client.request(JobQuery(job_id="nope"))
    with pytest.raises(RemoteError, match="bad_config"):
        client.request(JobStart(kind="train_refiner", config={"steps": -1}))
    # A reply type sent to the daemon is refused, not fatal.
    with pytest.raises(RemoteError, match="unexpected_message"):
        client.request(listing)
    assert client.handshake().capabilities.device == "cpu"  # still serving


# ---- the CLI


def test_keygen_writes_a_private_secret_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    assert cli.main(["keygen", "--out", str(tmp_path), "--name", "d"]) == 0
    public = (tmp_path / "d.pub").read_text().strip()
    assert len(public) == 40 and len((tmp_path / "d.key").read_text().strip()) == 40
    assert (tmp_path / "d.key").stat().st_mode & 0o777 == 0o600
    assert cli.main(["keygen", "--out", str(tmp_path), "--name", "d"]) == 2
    assert "--force" in capsys.readouterr().err


def test_serve_refuses_a_network_bind_without_keys(tmp_path: Path, capsys) -> None:
    code = cli.main(["serve", "--bind", "tcp://0.0.0.0:5555", "--models", str(tmp_path),
                     "--state", str(tmp_path / "s")])
    assert code == 2 and "--curve-key" in capsys.readouterr().err


def test_status_reports_an_unreachable_daemon(capsys) -> None:
    code = cli.main(["status", "--endpoint", "tcp://127.0.0.1:9", "--timeout-ms", "100",
                     "--retries", "0"])
    assert code == 1 and "no reply" in capsys.readouterr().err


def test_serve_and_status_with_curve_keys_as_processes(tmp_path: Path, models_dir: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("daemon", "artist"):
        assert cli.main(["keygen", "--out", str(keys), "--name", name]) == 0
    daemon = subprocess.Popen(
        [sys.executable, "-m", "refiner_daemon.cli", "serve", "--bind", "tcp://127.0.0.1:*",
         "--models", str(models_dir), "--state", str(tmp_path / "state"), "--device", "cpu",
         "--curve-key", str(keys / "daemon"), "--allow-client", str(keys / "artist.pub")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = daemon.stdout.readline()
        assert banner.startswith("refiner daemon on tcp://127.0.0.1:"), daemon.stderr.read()
        endpoint = banner.split()[3].rstrip(";")
        status = subprocess.run(
            [sys.executable, "-m", "refiner_daemon.cli", "status", "--endpoint", endpoint,
             "--server-key", str(keys / "daemon.pub"), "--client-key", str(keys / "artist"),
             "--jobs"], check=False, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "['tiny', 'tiny_att']" in status.stdout and "cpu" in status.stdout
        stranger = subprocess.run(
            [sys.executable, "-m", "refiner_daemon.cli", "status", "--endpoint", endpoint,
             "--timeout-ms", "300", "--retries", "0"],
            check=False, capture_output=True, text=True, timeout=60)
        assert stranger.returncode == 1  # no keys: the daemon never answers
        daemon.terminate()  # SIGTERM: a clean shutdown
        assert daemon.wait(20) == 128 + signal.SIGTERM  # the stop contract (protocol.processes)
        assert (tmp_path / "state" / "daemon.json").exists()
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, 9)
        daemon.stdout.close()
        daemon.stderr.close()
