"""The transport over real loopback sockets bound to port 0: round trips of every message
type, Lazy Pirate timeouts/retries/reconnects, version refusal, decode errors answered with an
ErrorReply, non-blocking polls, subscriptions, and CURVE authentication."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from test_protocol_codec import sample_messages

from protocol.codec import decode
from protocol.errors import (
    DaemonUnreachableError,
    RemoteError,
    TransportError,
    VersionMismatchError,
)
from protocol.messages import (
    ErrorReply,
    Handshake,
    JobInfo,
    JobProgress,
    JobStatus,
    JobSubscribe,
    Message,
)
from protocol.transport import (
    Client,
    CurveClientKeys,
    CurveServerKeys,
    Server,
    generate_keypair,
    is_loopback,
)
from protocol.version import PROTOCOL_VERSION

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture()
def server() -> Server:
    with Server(LOOPBACK_ANY_PORT) as bound:
        yield bound


def _client(server: Server, **options) -> Client:
    options.setdefault("timeout_ms", 2000)
    options.setdefault("retries", 1)
    return Client(server.endpoint, **options)


def _receive(server: Server, timeout_ms: int = 2000):
    incoming = server.receive(timeout_ms=timeout_ms)
    assert incoming is not None, "the server received nothing"
    return incoming


def _sleep_past_the_deadline(client: Client) -> None:
    """Wait out the client's timeout without polling, so exactly one try expires however slow
    the machine is."""
    time.sleep(client.timeout_ms / 1000 + 0.05)


def test_server_reports_the_port_it_bound(server: Server) -> None:
    assert server.endpoint.startswith("tcp://127.0.0.1:")
    assert not server.endpoint.endswith(":*") and int(server.endpoint.rsplit(":", 1)[1]) > 0


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).TYPE)
def test_round_trip_over_tcp(server: Server, message: Message) -> None:
    with _client(server) as client:
        request_id = client.send_request(message)
        incoming = _receive(server)
        assert incoming.message == message
        server.send(incoming.peer, incoming.message)  # echo it back
        reply = client.poll_reply(timeout_ms=2000)
        assert reply == message and reply.request_id == request_id
        assert client.pending == ()


def test_poll_reply_does_not_block(server: Server) -> None:
    with _client(server) as client:
        client.send_request(Handshake())
        started = time.perf_counter()
        assert client.poll_reply(timeout_ms=0) is None
        assert time.perf_counter() - started < 0.25  # far below the 2 s request timeout
        assert len(client.pending) == 1


def test_dropped_reply_is_retried_on_a_new_socket(server: Server) -> None:
    with _client(server, timeout_ms=300, retries=2) as client:
        request_id = client.send_request(Handshake())
        first = _receive(server)  # the server drops this one: no reply
        _sleep_past_the_deadline(client)
        # The expired try is noticed at once; the resend's deadline is 300 ms away.
        assert client.poll_reply(timeout_ms=50) is None
        assert client.reconnects == 1
        second = _receive(server)
        assert second.message.request_id == request_id
        assert second.peer != first.peer  # the resend came from a fresh socket
        server.send(second.peer, ErrorReply(request_id=request_id, code="busy", message="x"))
        reply = client.poll_reply(timeout_ms=2000)
        assert isinstance(reply, ErrorReply) and reply.request_id == request_id


def test_delayed_reply_to_the_old_socket_is_not_delivered_twice(server: Server) -> None:
    with _client(server, timeout_ms=300, retries=2) as client:
        request_id = client.send_request(Handshake())
        first = _receive(server)
        _sleep_past_the_deadline(client)
        assert client.poll_reply(timeout_ms=50) is None  # timed out once: resent
        second = _receive(server)
        for peer in (first.peer, second.peer):  # a slow daemon finally answers both copies
            server.send(peer, ErrorReply(request_id=request_id, code="busy", message="late"))
        reply = client.poll_reply(timeout_ms=2000)
        assert isinstance(reply, ErrorReply) and reply.message == "late"
        assert client.poll_reply(timeout_ms=200) is None


@pytest.mark.parametrize("tries", [1, 3])
def test_unreachable_daemon_raises_after_bounded_retries(tries: int) -> None:
    with Server(LOOPBACK_ANY_PORT) as temporary:
        endpoint = temporary.endpoint  # a port that nothing listens on once closed
    timeout_ms = 100
    with Client(endpoint, timeout_ms=timeout_ms, retries=tries - 1) as client:
        started = time.perf_counter()
        with pytest.raises(DaemonUnreachableError, match=f"after {tries} tries of 100 ms") as info:
            client.request(Handshake())
        elapsed = time.perf_counter() - started
        assert "refiner-daemon serve" in str(info.value)  # the hint says what to do
        assert tries * timeout_ms / 1000 <= elapsed < tries * timeout_ms / 1000 + 1.0
        assert client.reconnects == tries  # tries - 1 retries, plus a clean socket at the end
        assert client.pending == ()


def test_version_mismatch_is_refused_with_its_message(server: Server) -> None:
    with _client(server, protocol_version=PROTOCOL_VERSION + 1) as client:
        client.send_request(Handshake())
        assert server.receive(timeout_ms=2000) is None  # refused, not raised
        assert server.decode_failures == 1
        with pytest.raises(VersionMismatchError) as info:
            client.poll_reply(timeout_ms=2000)
        text = str(info.value)
        assert f"daemon speaks protocol version {PROTOCOL_VERSION}" in text
        assert f"sent version {PROTOCOL_VERSION + 1}" in text
        assert client.pending == ()  # a refused request is not retried


def test_malformed_frames_get_an_error_reply(server: Server) -> None:
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.endpoint)
    try:
        header = {"v": PROTOCOL_VERSION, "type": "refine_request",
                  "body": {"request_id": "r9", "model": "m", "meta": []},
                  "arrays": [{"field": "crops", "dtype": "uint8", "shape": [1000, 64, 64, 3]}]}
        cases = [[b"\xc1not msgpack"], [msgpack.packb(header), b"short"]]
        for frames in cases:
            raw.send_multipart(frames)
            assert server.receive(timeout_ms=2000) is None
            assert raw.poll(2000)
            reply = decode(raw.recv_multipart())
            assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert reply.request_id == "r9" and "frame has 5 bytes" in reply.message
        assert server.decode_failures == 2
    finally:
        raw.close(linger=0)


def test_request_raises_remote_errors(server: Server) -> None:
    import threading

    def answer_once() -> None:
        incoming = server.receive(timeout_ms=3000)
        if incoming is not None:
            server.send_error(incoming.peer, incoming.message.request_id, "unknown_model",
                              "no model 'x'", hint="list models with refiner-daemon status")

    thread = threading.Thread(target=answer_once)
    thread.start()
    try:
        with _client(server) as client, pytest.raises(RemoteError, match="unknown_model") as info:
            client.request(Handshake())
        assert info.value.code == "unknown_model" and "refiner-daemon status" in info.value.hint
    finally:
        thread.join()


def test_subscription_events_arrive_after_the_status_reply(server: Server) -> None:
    with _client(server) as client:
        request_id = client.send_request(JobSubscribe(job_id="j1"))
        incoming = _receive(server)
        job = JobInfo(job_id="j1", kind="train_refiner", state="running")
        server.send(incoming.peer, JobStatus(request_id=request_id, job=job))
        for seq, state in enumerate(["running", "succeeded"]):
            server.send(incoming.peer, JobProgress(request_id=request_id, job_id="j1", seq=seq,
                                                   state=state, event={"step": seq}))
        received = [client.poll_reply(timeout_ms=2000) for _ in range(3)]
        assert [type(m).__name__ for m in received] == ["JobStatus", "JobProgress", "JobProgress"]
        assert [m.seq for m in received[1:]] == [0, 1]


def test_curve_server_accepts_listed_client_and_ignores_others() -> None:
    server_public, server_secret = generate_keypair()
    client_public, client_secret = generate_keypair()
    stranger_public, stranger_secret = generate_keypair()
    keys = CurveServerKeys(server_public, server_secret, allowed_clients=(client_public,))
    with Server(LOOPBACK_ANY_PORT, curve=keys) as secure:
        good = CurveClientKeys(server_public, client_public, client_secret)
        with Client(secure.endpoint, curve=good, timeout_ms=2000, retries=0) as client:
            request_id = client.send_request(Handshake())
            incoming = _receive(secure)
            secure.send(incoming.peer, ErrorReply(request_id=request_id, code="busy", message="hi"))
            assert client.poll_reply(timeout_ms=2000).message == "hi"
        bad = CurveClientKeys(server_public, stranger_public, stranger_secret)
        with Client(secure.endpoint, curve=bad, timeout_ms=300, retries=0) as stranger:
            stranger.send_request(Handshake())
            assert secure.receive(timeout_ms=400) is None
            with pytest.raises(DaemonUnreachableError):
                stranger.poll_reply(timeout_ms=500)


def test_remote_bind_needs_curve_keys() -> None:
    with pytest.raises(TransportError, match="without CURVE keys"):
        Server("tcp://0.0.0.0:*")
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("inproc://x")
    assert not is_loopback("tcp://192.168.1.4:5555")


def test_bad_keys_and_endpoints_raise_protocol_errors() -> None:
    with pytest.raises(TransportError, match="40-character Z85"):
        CurveClientKeys("short", "a" * 40, "b" * 40)
    with pytest.raises(TransportError, match="cannot connect"):
        Client("nonsense://here")
    with pytest.raises(TransportError, match="cannot bind"):
        Server("tcp://127.0.0.1:notaport")
