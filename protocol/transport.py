"""ZeroMQ sockets for the protocol: a retrying client and a server helper that never crashes.

This is the only module of ``protocol`` that imports ``zmq``; every zmq failure leaves it as
a ``protocol.errors`` exception.

- ``Client`` (a DEALER socket) follows the Lazy Pirate pattern: each request waits at most
  ``timeout_ms`` for its reply; then the socket is closed and reopened and every pending
  request is sent again, up to ``retries`` times; after that ``DaemonUnreachableError``.
  ``send_request`` + ``poll_reply(timeout_ms=0)`` never block, so a Blender timer can drive
  them; ``request`` is the blocking form, and ``refine`` splits any number of crops into
  requests within the limits and retries "busy" answers.
- ``Server`` (a ROUTER socket) yields decoded requests with the peer that sent them. A
  message that fails to decode never escapes: the peer gets an ``ErrorReply`` instead.
- CURVE: ``generate_keypair`` makes keys; a server given ``CurveServerKeys`` encrypts and
  authenticates (optionally only the listed client public keys), and a server refuses to
  bind a non-loopback address without keys unless explicitly told to.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import zmq

from protocol.codec import decode, encode, peek_request_id
from protocol.errors import (
    DaemonUnreachableError,
    ProtocolError,
    RemoteError,
    TransportError,
    VersionMismatchError,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    FINISHED_JOB_STATES,
    ErrorReply,
    Handshake,
    HandshakeReply,
    JobProgress,
    JobSubscribe,
    Message,
    RefineReply,
    RefineRequest,
    new_request_id,
)
from protocol.version import DEFAULT_ENDPOINT, PROTOCOL_VERSION

LOOPBACK_HOSTS = ("127.", "localhost", "[::1]", "::1")


def generate_keypair() -> tuple[str, str]:
    """A new CURVE key pair as Z85 text: ``(public_key, secret_key)``."""
    if not zmq.has("curve"):
        raise TransportError(
            "this libzmq was built without CURVE support",
            hint="install a pyzmq wheel from PyPI, which bundles libzmq with CURVE",
        )
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def _check_key(name: str, key: str) -> bytes:
    if not isinstance(key, str) or len(key) != 40:
        raise TransportError(
            f"{name} must be a 40-character Z85 CURVE key, got {key!r:.60}",
            hint="make keys with `refiner-daemon keygen` (or protocol.transport.generate_keypair)",
        )
    return key.encode("ascii")


@dataclass(frozen=True)
class CurveServerKeys:
    """The daemon's key pair; ``allowed_clients`` limits access to those public keys.

    With ``allowed_clients=None`` any client that knows the server's public key may connect
    (traffic is still encrypted).
    """

    public_key: str
    secret_key: str
    allowed_clients: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_key("CurveServerKeys.public_key", self.public_key)
        _check_key("CurveServerKeys.secret_key", self.secret_key)
        for key in self.allowed_clients or ():
            _check_key("CurveServerKeys.allowed_clients entry", key)


@dataclass(frozen=True)
class CurveClientKeys:
    """The daemon's public key plus the client's own key pair."""

    server_public_key: str
    public_key: str
    secret_key: str

    def __post_init__(self) -> None:
        _check_key("CurveClientKeys.server_public_key", self.server_public_key)
        _check_key("CurveClientKeys.public_key", self.public_key)
        _check_key("CurveClientKeys.secret_key", self.secret_key)


def is_loopback(endpoint: str) -> bool:
    """True for inproc/ipc endpoints and tcp endpoints on a loopback address."""
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    if endpoint.startswith("tcp://"):
        return endpoint[len("tcp://"):].startswith(LOOPBACK_HOSTS)
    return False


def _wrap_zmq(action: str, endpoint: str, exc: zmq.ZMQError) -> TransportError:
    return TransportError(f"cannot {action} {endpoint}: {exc}")


# --------------------------------------------------------------------------------------
# Client


@dataclass(frozen=True)
class RefinedCrops:
    """What ``Client.refine`` returns: every crop refined, in the order sent."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    attention: np.ndarray | None  # float32 (N, H, W), attention refiners only
    meta: tuple[dict[str, Any], ...]
    model_sha256: str


@dataclass
class _Pending:
    message: Message
    deadline: float
    tries: int = 1


class Client:
    """A DEALER client with Lazy Pirate retries. Not thread-safe: use it from one thread.

    timeout_ms: how long one try waits for its reply. retries: how many times a request is
    sent again (on a fresh socket) before ``DaemonUnreachableError``. ``protocol_version``
    is only for tests that need to speak another version.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_ms: int = 3000,
        retries: int = 2,
        curve: CurveClientKeys | None = None,
        context: zmq.Context | None = None,
        limits: Limits = DEFAULT_LIMITS,
        protocol_version: int = PROTOCOL_VERSION,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.curve = curve
        self.limits = limits
        self.protocol_version = protocol_version
        self.reconnects = 0  # how many times the socket was reopened (for diagnostics)
        self._context = context or zmq.Context.instance()
        self._pending: dict[str, _Pending] = {}
        # Answered subscriptions: request id -> the JobSubscribe, with after_seq kept current
        # so a reconnect can resubscribe without replaying old events.
        self._subscriptions: dict[str, JobSubscribe] = {}
        self._inbox: collections.deque[Message] = collections.deque()
        self._socket: zmq.Socket | None = None
        self._open()

    # ---- socket lifecycle
    def _open(self) -> None:
        try:
            socket = self._context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
            if self.curve is not None:
                socket.curve_serverkey = _check_key("server key", self.curve.server_public_key)
                socket.curve_publickey = _check_key("public key", self.curve.public_key)
                socket.curve_secretkey = _check_key("secret key", self.curve.secret_key)
            socket.connect(self.endpoint)
        except zmq.ZMQError as exc:
            raise _wrap_zmq("connect to", self.endpoint, exc) from None
        self._socket = socket

    def _reopen(self) -> None:
        """Lazy Pirate: a socket that missed a reply is thrown away, not reused."""
        self._close_socket()
        self._open()
        self.reconnects += 1

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket; pending requests are forgotten."""
        self._close_socket()
        self._pending.clear()
        self._subscriptions.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pending(self) -> tuple[str, ...]:
        """Ids of the requests still waiting for a reply."""
        return tuple(self._pending)

    # ---- sending
    def _send(self, message: Message) -> None:
        if self._socket is None:
            raise TransportError("the client is closed", hint="create a new Client")
        frames = encode(message, limits=self.limits, version=self.protocol_version)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # queue full or no peer yet: the retry timer resends it
        except zmq.ZMQError as exc:
            raise _wrap_zmq("send to", self.endpoint, exc) from None

    def send_request(self, message: Message) -> str:
        """Queue ``message`` for the daemon without blocking; returns its request id."""
        if message.request_id in self._pending:
            raise ValueError(f"request id {message.request_id!r} is already pending")
        self._send(message)
        self._pending[message.request_id] = _Pending(message, self._deadline())
        return message.request_id

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_ms / 1000.0

    # ---- receiving
    def _handle_expired(self) -> None:
        now = time.monotonic()
        expired = [rid for rid, pending in self._pending.items() if pending.deadline <= now]
        if not expired:
            return
        if any(self._pending[rid].tries > self.retries for rid in expired):
            tries = self.retries + 1
            self._pending.clear()
            self._reopen()  # leave a clean socket behind for the next request
            raise DaemonUnreachableError(
                f"no reply from {self.endpoint} after {tries} tries of {self.timeout_ms} ms each"
            )
        # A fresh socket gets a fresh identity, so every outstanding request and
        # subscription must be sent again, not only the expired ones.
        self._reopen()
        for rid, pending in self._pending.items():
            if rid in expired:
                pending.tries += 1
            pending.deadline = self._deadline()
            self._send(pending.message)
        for subscription in self._subscriptions.values():
            self._send(subscription)

    def poll_reply(self, timeout_ms: int = 0) -> Message | None:
        """The next reply or event, or None if none arrives within ``timeout_ms``.

        With ``timeout_ms=0`` it never blocks (call it from a Blender timer). It also drives
        the retries, so call it regularly while requests are pending. Raises
        ``DaemonUnreachableError`` when a request ran out of retries, and ``ProtocolError``
        for a reply that cannot be decoded (e.g. a daemon speaking another version).
        """
        if self._inbox:
            return self._inbox.popleft()
        end = time.monotonic() + max(timeout_ms, 0) / 1000.0
        while True:
            self._handle_expired()
            if self._socket is None:
                raise TransportError("the client is closed", hint="create a new Client")
            now = time.monotonic()
            wake = min([end] + [pending.deadline for pending in self._pending.values()])
            try:
                # zmq.zmq_poll, not Socket.poll: the latter builds a Poller on every call.
                ready = zmq.zmq_poll([(self._socket, zmq.POLLIN)],
                                     max(0, int((wake - now) * 1000)))
                frames = self._socket.recv_multipart(copy=False) if ready else None
            except zmq.ZMQError as exc:
                raise _wrap_zmq("receive from", self.endpoint, exc) from None
            if frames is not None:
                message = self._accept(frames)
                if message is not None:
                    return message
            elif time.monotonic() >= end:
                return None

    def _accept(self, frames: list[Any]) -> Message | None:
        try:
            message = decode(frames, limits=self.limits, version=self.protocol_version)
        except ProtocolError:
            # The reply is unusable; do not retry a request the daemon has already refused.
            self._pending.pop(peek_request_id(frames), None)
            raise
        rid = message.request_id
        pending = self._pending.pop(rid, None)
        if pending is not None:
            if isinstance(pending.message, JobSubscribe) and not isinstance(message, ErrorReply):
                self._subscriptions[rid] = pending.message
            return message
        subscription = self._subscriptions.get(rid)
        if subscription is not None:
            if isinstance(message, JobProgress):
                self._subscriptions[rid] = dataclasses.replace(subscription, after_seq=message.seq)
                if message.state in FINISHED_JOB_STATES:
                    del self._subscriptions[rid]
            return message
        return None  # a late duplicate of a reply already delivered after a resend

    def unsubscribe(self, request_id: str) -> None:
        """Stop resubscribing this subscription on reconnect (events may still trickle in)."""
        self._subscriptions.pop(request_id, None)

    # ---- blocking helpers
    def request(self, message: Message, *, raise_on_error: bool = True) -> Message:
        """Send ``message`` and wait for its reply (bounded by the retries).

        An ``ErrorReply`` becomes a ``RemoteError`` unless ``raise_on_error`` is False.
        Other messages that arrive meanwhile (events) stay queued for ``poll_reply``.
        """
        rid = self.send_request(message)
        held: list[Message] = []
        try:
            while True:
                reply = self.poll_reply(timeout_ms=self.timeout_ms)
                if reply is None:
                    continue
                if reply.request_id != rid:
                    held.append(reply)
                    continue
                if raise_on_error and isinstance(reply, ErrorReply):
                    raise RemoteError(reply.code, reply.message, reply.hint, rid)
                return reply
        finally:
            self._inbox.extend(held)

    def handshake(self, client: str = "client", client_version: str = "") -> HandshakeReply:
        """Say hello; returns the daemon's versions and capabilities."""
        reply = self.request(Handshake(client=client, client_version=client_version))
        if not isinstance(reply, HandshakeReply):
            raise TransportError(f"expected a handshake_reply, got {reply.TYPE}")
        return reply

    def refine(
        self,
        model: str,
        crops: np.ndarray,
        *,
        masks: np.ndarray | None = None,
        meta: Sequence[dict[str, Any]] = (),
        busy_retries: int = 20,
    ) -> RefinedCrops:
        """Refine any number of crops (blocking): split into requests of at most
        ``limits.max_crops``, send them all at once, and reassemble the replies in order.

        A "busy" answer is retried after the daemon's ``retry_after_ms``, up to
        ``busy_retries`` times per chunk; other errors raise ``RemoteError``.
        """
        count = int(crops.shape[0]) if isinstance(crops, np.ndarray) and crops.ndim else 0
        meta = tuple(meta) or tuple({} for _ in range(count))
        if len(meta) != count:
            raise ValueError(f"meta has {len(meta)} entries for {count} crops")
        step = self.limits.max_crops
        chunks = [RefineRequest(model=model, crops=crops[start:start + step],
                                masks=None if masks is None else masks[start:start + step],
                                meta=meta[start:start + step])
                  for start in range(0, max(count, 1), step)]
        replies: dict[int, RefineReply] = {}
        busy_left = {index: busy_retries for index in range(len(chunks))}
        waiting = {self.send_request(chunk): index for index, chunk in enumerate(chunks)}
        held: list[Message] = []  # others' messages (events), kept for poll_reply
        try:
            while waiting:
                reply = self.poll_reply(timeout_ms=self.timeout_ms)
                if reply is not None and reply.request_id not in waiting:
                    held.append(reply)
                elif reply is not None:
                    self._take_refine_reply(reply, waiting, chunks, replies, busy_left)
        finally:
            self._inbox.extend(held)
            for request_id in waiting:  # after an error: drop the rest's replies when they come
                self._pending.pop(request_id, None)
        ordered = [replies[index] for index in range(len(chunks))]
        attention = (None if any(r.attention is None for r in ordered)
                     else np.concatenate([r.attention for r in ordered]))
        return RefinedCrops(
            images=np.concatenate([r.images for r in ordered]), attention=attention,
            meta=tuple(item for r in ordered for item in r.meta),
            model_sha256=ordered[0].model_sha256)

    def _take_refine_reply(self, reply: Message, waiting: dict[str, int],
                           chunks: list[RefineRequest], replies: dict[int, RefineReply],
                           busy_left: dict[int, int]) -> None:
        """One answer for ``refine``: keep a result, resend after "busy", raise otherwise."""
        index = waiting.pop(reply.request_id)
        if isinstance(reply, ErrorReply):
            if reply.code != "busy" or busy_left[index] == 0:
                raise RemoteError(reply.code, reply.message, reply.hint, reply.request_id)
            busy_left[index] -= 1
            time.sleep(max(reply.retry_after_ms, 1) / 1000.0)
            resend = dataclasses.replace(chunks[index], request_id=new_request_id())
            waiting[self.send_request(resend)] = index
            return
        if not isinstance(reply, RefineReply):
            raise TransportError(f"expected a refine_reply, got {reply.TYPE}")
        replies[index] = reply


# --------------------------------------------------------------------------------------
# Server


@dataclass(frozen=True)
class Incoming:
    """A decoded request and the ROUTER identity of the peer that sent it."""

    peer: bytes
    message: Message


class _AllowList:
    """zmq.auth credentials provider: accept only the listed client public keys."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = {key.encode("ascii") for key in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        # zmq.auth hands over the client's key already in Z85 form.
        return key in self._keys


class Server:
    """A ROUTER socket that turns frames into ``Incoming`` messages and messages into frames.

    A request that fails to decode is answered with an ``ErrorReply`` (its code names the
    problem) and never raises out of ``receive``. Binding a non-loopback address needs
    CURVE keys unless ``allow_insecure_remote`` is True.
    """

    def __init__(
        self,
        bind: str = DEFAULT_ENDPOINT,
        *,
        curve: CurveServerKeys | None = None,
        allow_insecure_remote: bool = False,
        context: zmq.Context | None = None,
        limits: Limits = DEFAULT_LIMITS,
        protocol_version: int = PROTOCOL_VERSION,
    ) -> None:
        if curve is None and not is_loopback(bind) and not allow_insecure_remote:
            raise TransportError(
                f"refusing to bind {bind} without CURVE keys: anyone on the network could "
                "send it requests",
                hint="create keys with `refiner-daemon keygen` and pass them, or bind "
                "tcp://127.0.0.1:PORT",
            )
        self.limits = limits
        self.protocol_version = protocol_version
        self.decode_failures = 0  # requests answered with an error because they did not decode
        self._context = context or zmq.Context.instance()
        self._authenticator: Any = None
        try:
            self._socket = self._context.socket(zmq.ROUTER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
            if curve is not None:
                if curve.allowed_clients is not None:
                    self._start_authenticator(curve.allowed_clients)
                self._socket.curve_server = True
                self._socket.curve_publickey = _check_key("public key", curve.public_key)
                self._socket.curve_secretkey = _check_key("secret key", curve.secret_key)
            self._socket.bind(bind)
            self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self.close()
            raise _wrap_zmq("bind", bind, exc) from None

    def _start_authenticator(self, allowed: tuple[str, ...]) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._authenticator = ThreadAuthenticator(self._context)
        self._authenticator.start()
        self._authenticator.configure_curve_callback(
            domain="*", credentials_provider=_AllowList(allowed)
        )

    def receive(self, timeout_ms: int = 0) -> Incoming | None:
        """The next valid request, or None (nothing arrived, or it was refused with an error)."""
        try:
            if self._socket.closed:  # as Socket.poll does; zmq_poll would poll fd 0 instead
                raise zmq.ZMQError(zmq.ENOTSUP)
            # zmq.zmq_poll, not Socket.poll: the latter builds a Poller on every call.
            if not zmq.zmq_poll([(self._socket, zmq.POLLIN)], max(timeout_ms, 0)):
                return None
            frames = self._socket.recv_multipart(copy=False)
        except zmq.ZMQError as exc:
            raise _wrap_zmq("receive on", self.endpoint, exc) from None
        peer, payload = frames[0].bytes, frames[1:]
        try:
            return Incoming(peer, decode(payload, limits=self.limits, version=self.protocol_version))
        except VersionMismatchError as exc:
            self._refuse(peer, payload, exc.code,
                         f"the daemon speaks protocol version {self.protocol_version}, the client "
                         f"sent version {exc.remote_version!r}", exc.hint)
        except ProtocolError as exc:
            self._refuse(peer, payload, exc.code, exc.message, exc.hint)
        except Exception as exc:  # noqa: BLE001 - a decode bug must not take the daemon down
            self._refuse(peer, payload, "internal", f"decoder failure: {exc!r}",
                         "report this as a bug, with the client version")
        return None

    def _refuse(self, peer: bytes, payload: list[Any], code: str, message: str, hint: str) -> None:
        self.decode_failures += 1
        self.send(peer, ErrorReply(
            request_id=peek_request_id(payload) or "unknown", code=code, message=message[:2000],
            hint=hint[:2000],
        ))

    def send(self, peer: bytes, message: Message) -> None:
        """Send ``message`` to ``peer``; a gone peer is silently skipped (ROUTER semantics)."""
        frames = encode(message, limits=self.limits, version=self.protocol_version)
        try:
            self._socket.send_multipart([peer, *frames], copy=False)
        except zmq.ZMQError as exc:
            raise _wrap_zmq("send on", self.endpoint, exc) from None

    def send_error(
        self, peer: bytes, request_id: str, code: str, message: str, hint: str = "",
        retry_after_ms: int = 0,
    ) -> None:
        self.send(peer, ErrorReply(request_id=request_id, code=code, message=message, hint=hint,
                                   retry_after_ms=retry_after_ms))

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
