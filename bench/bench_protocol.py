"""Benchmark: a refine request of 16 crops of 128x128x3 uint8, echoed over loopback TCP.

Three ways of moving the same bytes there and back, each through a DEALER socket to a ROUTER
echo thread, measured interleaved in the same run:

- protocol: ``Client.request`` -> ``Server.receive`` (decode) -> ``Server.send`` (encode) ->
  the client decodes the echoed message (the whole protocol stack, both directions), with
  one small metadata dict per crop, and again without metadata;
- bare zmq: ``send_multipart`` of the same header bytes and crop bytes, no codec, the echo
  re-sending the received ``zmq.Frame`` objects (the floor);
- bare zmq, reply from buffer: the same, but the echo sends the received bytes from a buffer,
  as any real reply (new arrays) must;
- pickle: ``pickle.dumps`` of the same arrays and metadata as one frame, ``pickle.loads`` on
  each side (what a naive implementation would do; pickle appears only here, never on the
  wire of the project);
- protocol and bare zmq again, both ends driven from one thread (no echo thread), which
  separates the protocol's own cost from thread hand-offs on a busy machine.

Reports the median round trip of each and the ratios protocol/bare and protocol/pickle. The
target (<= 1.3) is measured against the bare echo that replies from a buffer, because a real
reply carries new arrays and cannot re-send the received frames; the frame-resending floor is
reported next to it. Run: ``python -m bench protocol``.
"""

from __future__ import annotations

import pickle
import statistics
import threading
import time
from collections.abc import Callable
from typing import Self

import numpy as np
import zmq

from bench.report import print_table, write_result
from protocol.codec import encode
from protocol.messages import RefineRequest
from protocol.transport import Client, Server

CROPS, SIDE = 16, 128
ROUNDS, ITERATIONS, WARMUP = 11, 60, 10
RNG = np.random.default_rng(0)


def _request() -> RefineRequest:
    crops = RNG.integers(0, 256, size=(CROPS, SIDE, SIDE, 3), dtype=np.uint8)
    meta = tuple({"person": i, "angle_deg": 3.5 * i, "box": [i, i + 1, 64, 128]}
                 for i in range(CROPS))
    return RefineRequest(model="aggan", crops=crops, meta=meta)


class _EchoThread:
    """A ROUTER that sends every multipart message back to its sender until stopped."""

    def __init__(self, handle: Callable[[], None]) -> None:
        self._handle = handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._handle()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _time_calls(call: Callable[[], None], iterations: int) -> float:
    """Median seconds per call over ``iterations`` calls."""
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    request = _request()
    context = zmq.Context.instance()
    payload_bytes = request.crops.nbytes

    # --- protocol stack: Client <-> Server echo
    server = Server("tcp://127.0.0.1:*", context=context)

    def protocol_echo() -> None:
        incoming = server.receive(timeout_ms=50)
        if incoming is not None:
            server.send(incoming.peer, incoming.message)

    client = Client(server.endpoint, timeout_ms=5000, retries=0, context=context)

    def protocol_round_trip() -> None:
        reply = client.request(request)
        assert reply.crops.shape == request.crops.shape

    # The same crops without per-crop metadata: shows what the 16 metadata dicts cost.
    bare_request = RefineRequest(model=request.model, crops=request.crops)

    def protocol_no_meta_round_trip() -> None:
        client.request(bare_request)

    # --- bare zmq: the same frames, no codec
    bare_router = context.socket(zmq.ROUTER)
    bare_router.setsockopt(zmq.LINGER, 0)
    bare_port = bare_router.bind_to_random_port("tcp://127.0.0.1")
    bare_dealer = context.socket(zmq.DEALER)
    bare_dealer.setsockopt(zmq.LINGER, 0)
    bare_dealer.connect(f"tcp://127.0.0.1:{bare_port}")
    header = bytes(encode(request)[0])
    crop_view = memoryview(request.crops.reshape(-1))

    def bare_echo() -> None:
        if bare_router.poll(50):
            bare_router.send_multipart(bare_router.recv_multipart(copy=False), copy=False)

    def bare_round_trip() -> None:
        bare_dealer.send_multipart([header, crop_view], copy=False)
        bare_dealer.recv_multipart(copy=False)

    # Re-sending the received zmq.Frame objects (above) lets libzmq share the message; a real
    # reply carries new arrays and must be sent from a buffer, which pyzmq tracks with its
    # garbage-collector thread. This echo sends the received bytes from a buffer instead.
    buffer_router = context.socket(zmq.ROUTER)
    buffer_router.setsockopt(zmq.LINGER, 0)
    buffer_port = buffer_router.bind_to_random_port("tcp://127.0.0.1")
    buffer_dealer = context.socket(zmq.DEALER)
    buffer_dealer.setsockopt(zmq.LINGER, 0)
    buffer_dealer.connect(f"tcp://127.0.0.1:{buffer_port}")

    def buffer_echo() -> None:
        if buffer_router.poll(50):
            peer, head, body = buffer_router.recv_multipart(copy=False)
            buffer_router.send_multipart([peer, head, body.buffer], copy=False)

    def buffer_round_trip() -> None:
        buffer_dealer.send_multipart([header, crop_view], copy=False)
        buffer_dealer.recv_multipart(copy=False)

    # --- pickle: one frame with everything pickled, unpickled on both sides
    pickle_router = context.socket(zmq.ROUTER)
    pickle_router.setsockopt(zmq.LINGER, 0)
    pickle_port = pickle_router.bind_to_random_port("tcp://127.0.0.1")
    pickle_dealer = context.socket(zmq.DEALER)
    pickle_dealer.setsockopt(zmq.LINGER, 0)
    pickle_dealer.connect(f"tcp://127.0.0.1:{pickle_port}")
    plain = {"request_id": request.request_id, "model": request.model, "crops": request.crops,
             "meta": request.meta}

    def pickle_echo() -> None:
        if pickle_router.poll(50):
            peer, blob = pickle_router.recv_multipart()
            obj = pickle.loads(blob)
            pickle_router.send_multipart([peer, pickle.dumps(obj, protocol=5)])

    def pickle_round_trip() -> None:
        pickle_dealer.send(pickle.dumps(plain, protocol=5))
        obj = pickle.loads(pickle_dealer.recv())
        assert obj["crops"].shape == request.crops.shape

    # --- the same two ways driven from one thread (no echo thread): the codec and transport
    #     cost without the thread hand-offs, which a busy machine makes expensive.
    solo_server = Server("tcp://127.0.0.1:*", context=context)
    solo_client = Client(solo_server.endpoint, timeout_ms=5000, retries=0, context=context)

    def protocol_one_thread() -> None:
        solo_client.send_request(request)
        incoming = solo_server.receive(timeout_ms=5000)
        solo_server.send(incoming.peer, incoming.message)
        assert solo_client.poll_reply(timeout_ms=5000) is not None

    solo_router = context.socket(zmq.ROUTER)
    solo_router.setsockopt(zmq.LINGER, 0)
    solo_port = solo_router.bind_to_random_port("tcp://127.0.0.1")
    solo_dealer = context.socket(zmq.DEALER)
    solo_dealer.setsockopt(zmq.LINGER, 0)
    solo_dealer.connect(f"tcp://127.0.0.1:{solo_port}")

    def bare_one_thread() -> None:
        solo_dealer.send_multipart([header, crop_view], copy=False)
        solo_router.poll(5000)
        peer, head, body = solo_router.recv_multipart(copy=False)
        solo_router.send_multipart([peer, head, body.buffer], copy=False)
        solo_dealer.poll(5000)
        solo_dealer.recv_multipart(copy=False)

    ways = {"protocol": protocol_round_trip, "protocol, no meta": protocol_no_meta_round_trip,
            "bare zmq": bare_round_trip, "bare zmq, reply from buffer": buffer_round_trip,
            "pickle": pickle_round_trip,
            "protocol, one thread": protocol_one_thread,
            "bare zmq, reply from buffer, one thread": bare_one_thread}
    medians: dict[str, list[float]] = {name: [] for name in ways}
    with (_EchoThread(protocol_echo), _EchoThread(bare_echo), _EchoThread(buffer_echo),
          _EchoThread(pickle_echo)):
        for call in ways.values():
            _time_calls(call, WARMUP)
        for _ in range(ROUNDS):  # interleaved, so load changes hit every way alike
            for name, call in ways.items():
                medians[name].append(_time_calls(call, ITERATIONS))
    for closing in (client, server, solo_client, solo_server):
        closing.close()
    for socket in (bare_router, bare_dealer, buffer_router, buffer_dealer, pickle_router,
                   pickle_dealer, solo_router, solo_dealer):
        socket.close(linger=0)

    best = {name: statistics.median(values) for name, values in medians.items()}
    ratio_bare = best["protocol"] / best["bare zmq"]
    ratio_pickle = best["protocol"] / best["pickle"]
    ratio_bare_no_meta = best["protocol, no meta"] / best["bare zmq"]
    ratio_buffer = best["protocol"] / best["bare zmq, reply from buffer"]
    ratio_one_thread = (best["protocol, one thread"]
                        / best["bare zmq, reply from buffer, one thread"])
    rows = [[name, seconds * 1e3, payload_bytes * 2 / seconds / 1e9]
            for name, seconds in best.items()]
    print_table(
        f"refine request echo, {CROPS} crops of {SIDE}x{SIDE}x3 uint8 ({payload_bytes} bytes), "
        f"loopback tcp, median of {ROUNDS} rounds x {ITERATIONS}",
        ["way", "round trip ms", "GB/s (both ways)"], rows,
    )
    print_table("ratios", ["comparison", "ratio", "target"], [
        ["protocol / bare zmq replying from a buffer", ratio_buffer, "<= 1.3"],
        ["protocol / bare zmq re-sending the frames (floor)", ratio_bare, "(for reference)"],
        ["protocol without meta / bare zmq", ratio_bare_no_meta, "(for reference)"],
        ["protocol / bare zmq from a buffer, one thread", ratio_one_thread, "(for reference)"],
        ["protocol / pickle", ratio_pickle, "< 1 is faster than pickle"],
    ])
    write_result("protocol", {
        "workload": {"crops": CROPS, "height": SIDE, "width": SIDE, "channels": 3,
                     "payload_bytes": payload_bytes, "transport": "tcp loopback DEALER/ROUTER echo",
                     "rounds": ROUNDS, "iterations_per_round": ITERATIONS},
        "round_trip_ms": {name: seconds * 1e3 for name, seconds in best.items()},
        "round_trip_ms_per_round": {name: [v * 1e3 for v in values]
                                    for name, values in medians.items()},
        "baseline": "bare zmq multipart send/receive of the same bytes, the echo replying "
                    "from a buffer (as a real reply with new arrays must)",
        "ratio_protocol_to_bare_zmq": ratio_bare,
        "ratio_protocol_to_pickle": ratio_pickle,
        "ratio_protocol_without_meta_to_bare_zmq": ratio_bare_no_meta,
        "ratio_protocol_to_bare_zmq_reply_from_buffer": ratio_buffer,
        "ratio_protocol_to_bare_zmq_reply_from_buffer_one_thread": ratio_one_thread,
        "target_ratio_to_bare_zmq_reply_from_buffer": 1.3,
    })


if __name__ == "__main__":
    main()
