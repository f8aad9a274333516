"""The daemon under load, hostile input and the wrong keys, over real loopback sockets.

- 8 clients x 100 pipelined refine requests at once: each reply reaches its sender, carries
  that sender's request id and its own crops' result; nothing is lost or duplicated (raw
  DEALER sockets, so a duplicate could not hide inside the client's dedup).
- A fuzz run of 10,000+ malformed or hostile messages (random frames, truncated arrays, forged
  shapes, wrong versions, unknown types, bad fields, too many frames or crops, big headers,
  refused requests): each gets exactly one error reply, never an "internal" one; oversized
  payloads are dropped by the socket's size limit. The daemon then still answers.
- CURVE: a DaemonServer with an allow-list serves a listed client and nobody with other keys;
  a network bind without keys is refused.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from test_daemon_server import InvertingModel

from protocol.codec import decode, encode
from protocol.errors import DaemonUnreachableError, TransportError
from protocol.limits import Limits
from protocol.messages import (
    ErrorReply,
    Handshake,
    HandshakeReply,
    JobCancel,
    JobProgress,
    JobQuery,
    JobStart,
    JobSubscribe,
    Message,
    RefineReply,
    RefineRequest,
)
from protocol.transport import Client, CurveClientKeys, CurveServerKeys, generate_keypair
from protocol.version import PROTOCOL_VERSION
from refiner_daemon.serve.server import DaemonServer, ServerConfig
from refiner_daemon.serve.service import RefinerService, ServiceConfig

SMALL_LIMITS = Limits(max_message_bytes=1024 * 1024, max_header_bytes=64 * 1024)
FUZZ_MESSAGES = 10_000
UNKNOWN_ID = "unknown"  # what the daemon answers to when a request's id cannot be read


def _service(tmp_path: Path, limits: Limits = SMALL_LIMITS, delay_s: float = 0.0
             ) -> RefinerService:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "a.pt").write_bytes(b"stand-in")
    config = ServiceConfig(models_dir=str(models), state_dir=str(tmp_path / "state"),
                           device="cpu")
    return RefinerService(config, model_loader=lambda path, device: InvertingModel(path.stem,
                                                                                  delay_s),
                          trainers={}, limits=limits)


@pytest.fixture()
def running() -> Iterator:
    started: list[tuple[DaemonServer, threading.Event, threading.Thread]] = []

    def start(service: RefinerService, **options: Any) -> DaemonServer:
        server = DaemonServer(service, ServerConfig(bind="tcp://127.0.0.1:*", poll_ms=10,
                                                    **options))
        stop = threading.Event()
        thread = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
        thread.start()
        started.append((server, stop, thread))
        return server

    yield start
    for server, stop, thread in started:
        stop.set()
        thread.join(5)
        server.close()
        server.service.close()


def _dealer(endpoint: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def _decode_reply(frames: list[bytes]) -> Message:
    return decode(frames, limits=SMALL_LIMITS)


# ---- concurrency


def _client_run(endpoint: str, client_index: int, count: int, window: int,
                results: dict[int, Any]) -> None:
    """One client: pipeline ``count`` requests, at most ``window`` unanswered."""
    socket = _dealer(endpoint)
    sent: dict[str, np.ndarray] = {}
    replies: list[Message] = []
    try:
        next_index = 0
        while len(replies) < count:
            while next_index < count and next_index - len(replies) < window:
                # Crops that only this client and this request have: its index in pixel 0.
                crops = np.full((1, 4, 4, 3), next_index % 256, dtype=np.uint8)
                crops[0, 0, 0] = client_index
                request = RefineRequest(model="a", crops=crops,
                                        meta=({"client": client_index, "seq": next_index},))
                socket.send_multipart(encode(request, limits=SMALL_LIMITS))
                sent[request.request_id] = crops
                next_index += 1
            if not socket.poll(10_000):
                break  # a lost reply: the assertions below name it
            replies.append(_decode_reply(socket.recv_multipart()))
        late = [socket.recv_multipart() for _ in range(5) if socket.poll(200)]
    finally:
        socket.close(linger=0)
    results[client_index] = (sent, replies, late)


def test_eight_clients_each_get_their_own_hundred_replies(tmp_path: Path, running) -> None:
    server = running(_service(tmp_path), max_queue=128, batch_wait_ms=2)
    clients, per_client = 8, 100
    results: dict[int, Any] = {}
    threads = [threading.Thread(target=_client_run,
                                args=(server.endpoint, index, per_client, 8, results))
               for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(clients))
    for index, (sent, replies, late) in results.items():
        ids = [reply.request_id for reply in replies]
        assert len(ids) == per_client == len(set(ids)), f"client {index}: lost or duplicated"
        assert set(ids) == set(sent) and late == []
        for reply in replies:
            assert isinstance(reply, RefineReply), reply
            np.testing.assert_array_equal(reply.images, 255 - sent[reply.request_id])
            assert reply.meta[0]["client"] == index
    assert server.stats["refine_request"] == clients * per_client
    assert server.stats["busy"] == 0
    assert len(server.batch_sizes) < clients * per_client  # requests really shared batches


def test_queued_bytes_are_bounded_but_any_single_request_is_served(tmp_path: Path,
                                                                    running) -> None:
    """A few clients sending big requests cannot make the daemon hold more than
    ``max_queued_bytes`` of crops: the excess is told to retry."""
    request_bytes = 2 * 32 * 32 * 3
    server = running(_service(tmp_path, delay_s=0.3), batch_wait_ms=0, batch_max_crops=2,
                     max_queued_bytes=request_bytes * 3 // 2)
    rng = np.random.default_rng(2)
    with Client(server.endpoint, timeout_ms=10_000, retries=0, limits=SMALL_LIMITS) as client:
        crops = {client.send_request(RefineRequest(model="a", crops=batch)): batch
                 for batch in rng.integers(0, 256, (6, 2, 32, 32, 3), dtype=np.uint8)}
        replies = [client.poll_reply(10_000) for _ in crops]
        assert {reply.request_id for reply in replies} == set(crops)  # one answer each
        busy = [r for r in replies if isinstance(r, ErrorReply)]
        assert busy and all(r.code == "busy" and "bytes of crops are queued" in r.message
                             and r.retry_after_ms > 0 for r in busy)
        for reply in replies:
            if isinstance(reply, RefineReply):
                np.testing.assert_array_equal(reply.images, 255 - crops[reply.request_id])
        big = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # over the bound alone
        np.testing.assert_array_equal(client.refine("a", big).images, 255 - big)


# ---- fuzzing


def _header(message: Message) -> dict[str, Any]:
    return msgpack.unpackb(encode(message, limits=SMALL_LIMITS)[0], raw=False)


def _frames_with_header(header: Any, arrays: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *arrays]


def _hostile_messages(rng: np.random.Generator, count: int) -> list[tuple[str, list[bytes]]]:
    """``count`` messages that must each be refused: ``(request id or UNKNOWN_ID, frames)``."""
    crops = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    valid_refine = RefineRequest(model="a", crops=crops, meta=({"k": 1}, {"k": 2}))
    base = _header(valid_refine)
    pixels = crops.tobytes()

    def refine_header(request_id: str) -> dict[str, Any]:
        header = msgpack.unpackb(msgpack.packb(base), raw=False)  # a deep copy
        header["body"]["request_id"] = request_id
        return header

    def random_frames(_: str) -> tuple[str, list[bytes]]:
        frames = [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(1, 4)))]
        return UNKNOWN_ID, frames

    def truncated(rid: str) -> tuple[str, list[bytes]]:
        cut = int(rng.integers(1, len(pixels)))
        return rid, _frames_with_header(refine_header(rid), [pixels[:-cut]])

    def forged_shape(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        header["arrays"][0]["shape"] = [
            [2, 8, 8, 4], [2, 8, 8], [1, 8, 8, 3], [2 ** 40, 8, 8, 3], [2, -8, 8, 3],
            [2, 8, 8, 3, 1], [9999, 9999, 9999, 3], "2x8x8x3", [2.0, 8, 8, 3], [],
            [0, 8, 8, 3]][int(rng.integers(0, 11))]
        return rid, _frames_with_header(header, [pixels])

    def wrong_version(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        header["v"] = [0, PROTOCOL_VERSION + 1, 99, -1, str(PROTOCOL_VERSION), None, 1.5,
                       [PROTOCOL_VERSION]][int(rng.integers(0, 8))]
        return rid, _frames_with_header(header, [pixels])

    def unknown_type(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        header["type"] = ["", "refine", "REFINE_REQUEST", "__class__", 7, None,
                          "x" * 500][int(rng.integers(0, 7))]
        return rid, _frames_with_header(header, [pixels])

    def bad_field(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        choice = int(rng.integers(0, 7))
        if choice == 0:
            header["body"]["model"] = 123
        elif choice == 1:
            header["body"]["meta"] = [{"k": 1}]  # one entry for two crops
        elif choice == 2:
            header["body"]["meta"] = "everything"
        elif choice == 3:
            header["arrays"][0]["dtype"] = "float32"  # allowed on the wire, not for crops
            return rid, _frames_with_header(header, [pixels * 4])
        elif choice == 4:
            header["body"]["model"] = ""
        elif choice == 5:
            header["body"]["surprise"] = True
        else:
            header["arrays"][0]["field"] = "images"
        return rid, _frames_with_header(header, [pixels])

    def bad_structure(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        choice = int(rng.integers(0, 6))
        if choice == 0:
            del header["arrays"]
        elif choice == 1:
            header["extra"] = 1
        elif choice == 2:
            header["arrays"] = {"field": "crops"}
        elif choice == 3:
            return rid, _frames_with_header(header, [])  # the array frame is missing
        elif choice == 4:
            return rid, _frames_with_header(header, [pixels, pixels])  # one frame too many
        else:
            header["arrays"].append(dict(header["arrays"][0]))  # the same field twice
            return rid, _frames_with_header(header, [pixels, pixels])
        return rid, _frames_with_header(header, [pixels])

    def binary_in_header(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        header["body"]["meta"] = [{"k": b"\x00\x01"}, {"k": 2}]
        return UNKNOWN_ID, _frames_with_header(header, [pixels])  # the header is unreadable

    def too_many_frames(rid: str) -> tuple[str, list[bytes]]:
        return rid, _frames_with_header(refine_header(rid), [pixels] * 20)

    def too_many_crops(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        header["arrays"][0]["shape"] = [SMALL_LIMITS.max_crops + 1, 4, 4, 3]
        header["body"]["meta"] = []
        return rid, _frames_with_header(header, [bytes((SMALL_LIMITS.max_crops + 1) * 48)])

    def big_header(rid: str) -> tuple[str, list[bytes]]:
        header = refine_header(rid)
        header["body"]["meta"] = [{"k": "x" * (SMALL_LIMITS.max_header_bytes + 10)}, {}]
        return rid, _frames_with_header(header, [pixels])

    def refused_request(rid: str) -> tuple[str, list[bytes]]:
        choice = int(rng.integers(0, 8))
        message: Message
        if choice == 0:
            message = RefineRequest(request_id=rid, model="../../etc/passwd", crops=crops)
        elif choice == 1:
            message = RefineRequest(request_id=rid, model="missing", crops=crops)
        elif choice == 2:
            message = JobQuery(request_id=rid, job_id="nope")
        elif choice == 3:
            message = JobCancel(request_id=rid, job_id="nope")
        elif choice == 4:
            message = JobSubscribe(request_id=rid, job_id="nope")
        elif choice == 5:
            message = JobStart(request_id=rid, kind="train_refiner",
                               config={"run_dir": "/etc"})  # no trainer here, and no such root
        elif choice == 6:
            message = ErrorReply(request_id=rid, code="busy", message="a reply, not a request")
        else:
            message = JobProgress(request_id=rid, job_id="x", seq=0, state="running")
        return rid, [bytes(frame) for frame in encode(message, limits=SMALL_LIMITS)]

    makers = [random_frames, truncated, forged_shape, wrong_version, unknown_type, bad_field,
              bad_structure, binary_in_header, too_many_frames, too_many_crops, big_header,
              refused_request]
    return [makers[index % len(makers)](f"fuzz-{index}") for index in range(count)]


def test_fuzzed_messages_each_get_one_error_and_the_daemon_survives(tmp_path: Path,
                                                                    running) -> None:
    server = running(_service(tmp_path))
    messages = _hostile_messages(np.random.default_rng(0), FUZZ_MESSAGES)
    socket = _dealer(server.endpoint)
    replies: list[Message] = []
    window, sent, started = 200, 0, time.monotonic()
    try:
        while len(replies) < len(messages):
            while sent < len(messages) and sent - len(replies) < window:
                socket.send_multipart(messages[sent][1])
                sent += 1
            assert socket.poll(10_000), f"no reply after {len(replies)} of {sent} sent"
            replies.append(_decode_reply(socket.recv_multipart()))
        assert not socket.poll(300), "more replies than messages"
        elapsed = time.monotonic() - started

        assert all(isinstance(reply, ErrorReply) for reply in replies)
        codes = collections.Counter(reply.code for reply in replies)
        assert "internal" not in codes, codes  # a crash in the decoder or a handler
        expected = collections.Counter(rid for rid, _ in messages)
        assert collections.Counter(reply.request_id for reply in replies) == expected
        assert set(codes) == {"malformed", "version_mismatch", "unknown_type", "limit_exceeded",
                              "unknown_model", "unknown_job", "unexpected_message",
                              "unavailable"}, codes
        assert elapsed < 60

        # The same connection still gets a real answer, and a real refinement.
        socket.send_multipart(encode(Handshake(request_id="hello"), limits=SMALL_LIMITS))
        assert socket.poll(5000)
        assert isinstance(_decode_reply(socket.recv_multipart()), HandshakeReply)
    finally:
        socket.close(linger=0)

    # Payloads over max_message_bytes are cut off by the socket's size limit: no reply, no
    # allocation, and the daemon keeps serving others.
    oversized = _dealer(server.endpoint)
    try:
        for _ in range(5):
            oversized.send_multipart([b"\x00" * (SMALL_LIMITS.max_message_bytes + 1)])
        assert not oversized.poll(500)
    finally:
        oversized.close(linger=0)
    with Client(server.endpoint, timeout_ms=5000, retries=0, limits=SMALL_LIMITS) as client:
        crops = np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)
        np.testing.assert_array_equal(client.refine("a", crops).images, 255 - crops)
    assert server.transport.decode_failures > FUZZ_MESSAGES // 2


# ---- keys


def test_curve_daemon_serves_listed_keys_only_and_network_binds_need_keys(
        tmp_path: Path) -> None:
    service = _service(tmp_path)
    with pytest.raises(TransportError, match="without CURVE keys"):
        DaemonServer(service, ServerConfig(bind="tcp://0.0.0.0:*"))
    server_public, server_secret = generate_keypair()
    client_public, client_secret = generate_keypair()
    stranger_public, stranger_secret = generate_keypair()
    impostor_public, _ = generate_keypair()
    server = DaemonServer(service, ServerConfig(bind="tcp://127.0.0.1:*", poll_ms=10),
                          curve=CurveServerKeys(server_public, server_secret, (client_public,)))
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        good = CurveClientKeys(server_public, client_public, client_secret)
        with Client(server.endpoint, curve=good, timeout_ms=3000, retries=0) as client:
            assert client.handshake().capabilities.models == ("a",)
        wrong_keys = [
            CurveClientKeys(server_public, stranger_public, stranger_secret),  # not listed
            CurveClientKeys(impostor_public, client_public, client_secret),  # wrong daemon key
        ]
        for keys in wrong_keys:
            with (Client(server.endpoint, curve=keys, timeout_ms=300, retries=0) as outsider,
                  pytest.raises(DaemonUnreachableError)):
                outsider.handshake()
        with (Client(server.endpoint, timeout_ms=300, retries=0) as plain,  # no keys at all
              pytest.raises(DaemonUnreachableError)):
            plain.handshake()
        assert server.stats["handshake"] == 1  # only the listed client ever got through
    finally:
        stop.set()
        thread.join(5)
        server.close()
        service.close()


def test_bit_flipped_messages_each_get_exactly_one_reply(tmp_path: Path, running) -> None:
    """Near-valid input: valid messages with a few random bits flipped. Some still decode (a
    flipped pixel is still a crop) and get a normal reply; the rest get an error; never two
    replies, never none, never "internal"."""
    server = running(_service(tmp_path), max_queue=256)
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    originals = [encode(message, limits=SMALL_LIMITS) for message in (
        RefineRequest(model="a", crops=crops, meta=({"k": 1}, {"k": 2})),
        Handshake(client="fuzz"), JobQuery(job_id="nope"), JobSubscribe(job_id="x", after_seq=3))]
    messages = []
    for index in range(3000):
        frames = [bytearray(bytes(frame)) for frame in originals[index % len(originals)]]
        for _ in range(int(rng.integers(1, 4))):
            frame = frames[int(rng.integers(0, len(frames)))]
            position = int(rng.integers(0, len(frame)))
            frame[position] ^= 1 << int(rng.integers(0, 8))
        messages.append([bytes(frame) for frame in frames])
    socket = _dealer(server.endpoint)
    replies: list[Message] = []
    sent = 0
    try:
        while len(replies) < len(messages):
            while sent < len(messages) and sent - len(replies) < 100:
                socket.send_multipart(messages[sent])
                sent += 1
            assert socket.poll(10_000), f"no reply after {len(replies)} of {sent} sent"
            replies.append(_decode_reply(socket.recv_multipart()))
        assert not socket.poll(300), "more replies than messages"
    finally:
        socket.close(linger=0)
    kinds = collections.Counter(type(reply).__name__ for reply in replies)
    codes = collections.Counter(r.code for r in replies if isinstance(r, ErrorReply))
    assert "internal" not in codes, codes
    assert kinds["ErrorReply"] > 0 and kinds["RefineReply"] + kinds["HandshakeReply"] > 0, kinds
