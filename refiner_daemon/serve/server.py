"""The daemon's socket loop: receive, decode, dispatch to the service, encode, reply.

Everything it does goes through ``protocol.transport.Server`` (which answers undecodable
messages itself) and ``RefinerService`` (which does the work). What the loop adds:

- a handshake that reports versions and capabilities;
- a bounded queue of refine requests: beyond ``max_queue`` requests, or ``max_queued_bytes``
  of crops (so a few clients sending the largest allowed requests cannot make the daemon hold
  gigabytes), a request is answered at once with an ``ErrorReply`` of code ``busy`` and a
  ``retry_after_ms`` estimate;
- batching: queued requests for the same model and crop size, from any clients, are refined in
  one call of up to ``batch_max_crops`` crops, once the batch is full or its oldest request has
  waited ``batch_wait_ms``. The model runs in an inference thread, one batch at a time, so the
  loop keeps answering handshakes and job requests during a long batch, and requests arriving
  meanwhile gather into the next batch;
- job requests, and job events pushed to subscribers (read from the job manager in this thread,
  so the socket is only ever used here).

The loop never dies on a bad request: service errors become ``ErrorReply``s with their code,
anything unexpected becomes code ``internal``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from protocol.messages import (
    FINISHED_JOB_STATES,
    ErrorReply,
    Handshake,
    HandshakeReply,
    JobCancel,
    JobList,
    JobListReply,
    JobProgress,
    JobQuery,
    JobStart,
    JobStatus,
    JobSubscribe,
    Message,
    RefineReply,
    RefineRequest,
)
from protocol.transport import CurveServerKeys, Incoming, Server
from protocol.version import DEFAULT_ENDPOINT, PROTOCOL_VERSION
from refiner_daemon.serve.service import RefinerService, ServiceError

log = logging.getLogger("refiner_daemon.serve.server")


def daemon_version() -> str:
    try:
        return metadata.version("fisheye-synth")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ServerConfig:
    """How the daemon listens and batches.

    bind: endpoint (loopback by default; others need CURVE keys). max_queue: refine requests
    waiting before new ones get "busy". max_queued_bytes: crop bytes waiting before new
    requests get "busy" (a request is always taken into an empty queue, so any request within
    the protocol limits can be served). batch_max_crops / batch_wait_ms: the batching bounds.
    poll_ms: how long an idle loop waits for a message (also the job-event push latency).
    """

    bind: str = DEFAULT_ENDPOINT
    max_queue: int = 32
    max_queued_bytes: int = 1024 * 1024 * 1024
    batch_max_crops: int = 64
    batch_wait_ms: float = 5.0
    poll_ms: int = 50
    allow_insecure_remote: bool = False

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_queued_bytes", "batch_max_crops", "poll_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServerConfig.{name} must be an int >= 1, got {value!r}")
        if not self.batch_wait_ms >= 0:
            raise ValueError(f"ServerConfig.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _request_bytes(request: RefineRequest) -> int:
    return request.crops.nbytes + (0 if request.masks is None else request.masks.nbytes)


@dataclass
class _Queued:
    peer: bytes
    request: RefineRequest
    arrived: float

    @property
    def group(self) -> tuple[str, int, int]:
        """Requests that can share one batch: same model and crop size."""
        return (self.request.model, *self.request.crops.shape[1:3])


@dataclass
class _Finished:
    """A batch back from the inference thread: the result or the service error."""

    batch: list[_Queued]
    refined: Any  # service.Refined, or None when ``error`` is set
    error: ServiceError | None
    seconds: float


@dataclass
class _Subscription:
    peer: bytes
    job_id: str
    last_seq: int


class DaemonServer:
    """The ROUTER loop around a ``RefinerService``. Use from one thread."""

    def __init__(self, service: RefinerService, config: ServerConfig | None = None, *,
                 curve: CurveServerKeys | None = None, context: Any = None) -> None:
        self.service = service
        self.config = config or ServerConfig()
        self.transport = Server(self.config.bind, curve=curve, context=context,
                                limits=service.limits,
                                allow_insecure_remote=self.config.allow_insecure_remote)
        self.endpoint = self.transport.endpoint
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queued_bytes = 0  # crop and mask bytes of the queued (not in-flight) requests
        self._subscriptions: dict[str, _Subscription] = {}
        self._seconds_per_crop = 0.01  # running estimate, for retry_after_ms
        self.stats: collections.Counter[str] = collections.Counter()
        self.batch_sizes: list[int] = []  # crops per model call, most recent last (bounded)
        # The socket stays in the loop's thread; the inference thread only sees arrays.
        self._to_infer: queue.Queue[list[_Queued] | None] = queue.Queue()
        self._finished: queue.Queue[_Finished] = queue.Queue()
        self._in_flight: list[_Queued] | None = None
        self._inference = threading.Thread(target=self._infer_forever, name="inference",
                                           daemon=True)
        self._inference.start()

    # ---- the loop
    def serve_forever(self, stop: threading.Event) -> None:
        log.info("refiner daemon listening on %s", self.endpoint)
        while not stop.is_set():
            self.step()

    def step(self) -> None:
        """One iteration: take in what arrived, reply to a finished batch, start a due one,
        push job events."""
        incoming = self.transport.receive(timeout_ms=self._wait_ms())
        while incoming is not None:
            self._dispatch(incoming)
            incoming = self.transport.receive(timeout_ms=0)
        self._collect_finished()
        self._start_due_batch()
        self._push_job_events()

    def _wait_ms(self) -> int:
        if self._in_flight is not None:
            return min(self.config.poll_ms, 2)  # look for the finished batch soon
        if not self._queue:
            return self.config.poll_ms
        due = self._queue[0].arrived + self.config.batch_wait_ms / 1000.0
        return max(0, int((due - time.monotonic()) * 1000))

    def close(self) -> None:
        """Stop the inference thread (after its current batch) and close the socket."""
        self._to_infer.put(None)
        self._inference.join(timeout=60)
        self.transport.close()

    # ---- dispatch
    def _dispatch(self, incoming: Incoming) -> None:
        message = incoming.message
        self.stats[message.TYPE] += 1
        try:
            reply = self._handle(incoming.peer, message)
        except ServiceError as exc:
            reply = ErrorReply(request_id=message.request_id, code=exc.code,
                               message=exc.message, hint=exc.hint)
        except Exception as exc:  # one bad request must not stop the daemon
            log.exception("failed to handle %s", message.TYPE)
            reply = ErrorReply(request_id=message.request_id, code="internal",
                               message=f"{type(exc).__name__}: {exc}"[:2000],
                               hint="see the daemon's log; report it if it persists")
        if reply is not None:
            self._send(incoming.peer, reply)

    def _handle(self, peer: bytes, message: Message) -> Message | None:
        service = self.service
        if isinstance(message, Handshake):
            return HandshakeReply(request_id=message.request_id, daemon_version=daemon_version(),
                                  protocol_version=PROTOCOL_VERSION,
                                  capabilities=service.capabilities())
        if isinstance(message, RefineRequest):
            return self._enqueue(peer, message)
        if isinstance(message, JobStart):
            return JobStatus(request_id=message.request_id,
                             job=service.start_job(message.kind, message.config,
                                                   message.request_id))
        if isinstance(message, JobQuery):
            return JobStatus(request_id=message.request_id, job=service.job(message.job_id))
        if isinstance(message, JobCancel):
            return JobStatus(request_id=message.request_id,
                             job=service.cancel_job(message.job_id))
        if isinstance(message, JobList):
            return JobListReply(request_id=message.request_id, jobs=tuple(service.list_jobs()))
        if isinstance(message, JobSubscribe):
            job = service.job(message.job_id)
            self._subscriptions[message.request_id] = _Subscription(
                peer, message.job_id, message.after_seq)
            return JobStatus(request_id=message.request_id, job=job)
        return ErrorReply(request_id=message.request_id, code="unexpected_message",
                          message=f"the daemon does not accept {message.TYPE!r} messages",
                          hint="send a request type: handshake, refine_request or job_*")

    def _send(self, peer: bytes, message: Message) -> None:
        try:
            self.transport.send(peer, message)
        except Exception:  # e.g. a reply over the limits; log, keep serving
            log.exception("could not send %s to a client", message.TYPE)

    # ---- refine queue and batching
    def _enqueue(self, peer: bytes, request: RefineRequest) -> Message | None:
        size = _request_bytes(request)
        full = None
        if len(self._queue) >= self.config.max_queue:
            full = f"{len(self._queue)} refine requests are queued (limit {self.config.max_queue})"
        elif self._queue and self._queued_bytes + size > self.config.max_queued_bytes:
            full = (f"{self._queued_bytes} bytes of crops are queued and this request adds "
                    f"{size} (limit {self.config.max_queued_bytes})")
        if full is not None:
            self.stats["busy"] += 1
            queued_crops = sum(q.request.crops.shape[0]
                               for q in [*self._queue, *(self._in_flight or [])])
            retry_ms = max(10, int(queued_crops * self._seconds_per_crop * 1000))
            return ErrorReply(request_id=request.request_id, code="busy", message=full,
                              hint=f"retry in about {retry_ms} ms", retry_after_ms=retry_ms)
        self.service.load_model(request.model)  # unknown models fail now, not in a batch
        self._queue.append(_Queued(peer, request, time.monotonic()))
        self._queued_bytes += size
        return None

    def _start_due_batch(self) -> None:
        """Hand the oldest due batch to the inference thread, if it is idle."""
        if self._in_flight is not None or not self._queue:
            return
        head = self._queue[0]
        group = [q for q in self._queue if q.group == head.group]
        crops = sum(q.request.crops.shape[0] for q in group)
        waited_ms = (time.monotonic() - head.arrived) * 1000.0
        if crops < self.config.batch_max_crops and waited_ms < self.config.batch_wait_ms:
            return  # the oldest group is not due yet, so nothing younger is either
        batch, size = [], 0
        for queued in group:
            count = queued.request.crops.shape[0]
            if batch and size + count > self.config.batch_max_crops:
                break
            batch.append(queued)
            size += count
        for queued in batch:
            self._queue.remove(queued)
            self._queued_bytes -= _request_bytes(queued.request)
        self._in_flight = batch
        self._to_infer.put(batch)

    def _infer_forever(self) -> None:
        """The inference thread: refine one batch at a time until given None."""
        while True:
            batch = self._to_infer.get()
            if batch is None:
                return
            model = batch[0].request.model
            crops = (batch[0].request.crops if len(batch) == 1
                     else np.concatenate([q.request.crops for q in batch]))
            started = time.perf_counter()
            try:
                refined, error = self.service.refine(model, crops), None
            except ServiceError as exc:
                refined, error = None, exc
            except Exception as exc:  # report it to the clients, keep serving
                log.exception("refining with %s failed", model)
                refined, error = None, ServiceError("internal", f"{type(exc).__name__}: {exc}")
            self._finished.put(_Finished(batch, refined, error, time.perf_counter() - started))

    def _collect_finished(self) -> None:
        try:
            finished = self._finished.get_nowait()
        except queue.Empty:
            return
        self._in_flight = None
        batch, refined = finished.batch, finished.refined
        if finished.error is not None:
            for queued in batch:
                self._send(queued.peer, ErrorReply(
                    request_id=queued.request.request_id, code=finished.error.code,
                    message=finished.error.message, hint=finished.error.hint))
            return
        total = sum(q.request.crops.shape[0] for q in batch)
        if total:
            # Exponential average: the busy hint follows the model's current speed.
            per_crop = finished.seconds / total
            self._seconds_per_crop = 0.8 * self._seconds_per_crop + 0.2 * per_crop
        self.stats["batches"] += 1
        self.batch_sizes = [*self.batch_sizes[-999:], total]
        start = 0
        for queued in batch:
            count = queued.request.crops.shape[0]
            part = slice(start, start + count)
            start += count
            attention = None if refined.attention is None else refined.attention[part]
            self._send(queued.peer, RefineReply(
                request_id=queued.request.request_id, model=queued.request.model,
                model_sha256=refined.model_sha256, images=refined.images[part],
                attention=attention, meta=queued.request.meta,
                elapsed_ms=finished.seconds * 1000.0))

    # ---- job events
    def _push_job_events(self) -> None:
        for request_id, subscription in list(self._subscriptions.items()):
            try:
                events = self.service.job_events(subscription.job_id, subscription.last_seq)
                finished = self.service.job(subscription.job_id).state in FINISHED_JOB_STATES
            except ServiceError:
                del self._subscriptions[request_id]
                continue
            for seq, state, event in events:
                self._send(subscription.peer, JobProgress(
                    request_id=request_id, job_id=subscription.job_id, seq=seq, state=state,
                    event=event))
                subscription.last_seq = seq
            if finished and not self.service.job_events(subscription.job_id,
                                                        subscription.last_seq):
                del self._subscriptions[request_id]
