"""Exceptions raised by the protocol, and the error codes carried by ``ErrorReply``.

Every failure the protocol detects is a ``ProtocolError``; callers catch that one class.
Each subclass has a stable ``code`` (sent on the wire in an ``ErrorReply``) and a ``hint``
that tells the user what to do about it.
"""

from __future__ import annotations

# Codes an ErrorReply may carry, with what they mean. A plain dict so both the daemon and
# the add-on can show a description for a code they received.
ERROR_CODES: dict[str, str] = {
    "malformed": "the message could not be decoded (bad header, frames or field values)",
    "version_mismatch": "the two sides speak different protocol versions",
    "limit_exceeded": "the message breaks a size, count, dtype or shape limit",
    "unknown_type": "the message type is not one this side knows",
    "unexpected_message": "the message type is valid but not accepted here",
    "unknown_model": "no refiner model with that name is available",
    "unknown_job": "no job with that id exists",
    "bad_config": "a job config or request field is invalid",
    "busy": "the daemon's queue is full; retry after the hinted delay",
    "unavailable": "the requested feature is not available in this daemon",
    "internal": "the daemon failed while handling the request",
    "unreachable": "the daemon did not answer",
}


class ProtocolError(Exception):
    """Base class: anything the protocol refuses or cannot deliver."""

    code: str = "malformed"
    default_hint: str = "check that both sides run the same version of this project"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class MalformedMessageError(ProtocolError):
    """The frames do not form a valid message: bad msgpack, missing fields, wrong types."""

    code = "malformed"


class InvalidFieldError(MalformedMessageError):
    """A message field has the wrong type or an impossible value (raised on construction)."""

    default_hint = "build messages with the field types documented in protocol.messages"


class UnknownMessageTypeError(MalformedMessageError):
    """The header names a message type that is not in ``MESSAGE_TYPES``."""

    code = "unknown_type"


class VersionMismatchError(ProtocolError):
    """The peer's header carries a different ``PROTOCOL_VERSION``."""

    code = "version_mismatch"

    def __init__(self, local: int, remote: object, detail: str = "") -> None:
        self.local_version = local
        self.remote_version = remote
        message = f"protocol version mismatch: this side speaks {local}, the peer speaks {remote!r}"
        if detail:
            message += f"; the peer said: {detail}"
        super().__init__(
            message,
            hint="install the same version of the add-on and the refiner daemon on both sides",
        )


class LimitExceededError(ProtocolError):
    """A message breaks one of the configured ``Limits``; ``limit`` names which one."""

    code = "limit_exceeded"

    def __init__(self, limit: str, message: str, *, hint: str | None = None) -> None:
        self.limit = limit
        super().__init__(
            f"limit {limit!r} exceeded: {message}",
            hint=hint or f"send less per message, or raise Limits.{limit} on both sides",
        )


class MessageTooLargeError(LimitExceededError):
    """The whole message (or its header) is larger than allowed."""


class TooManyCropsError(LimitExceededError):
    """A refine request or reply carries more crops than ``Limits.max_crops``."""


class DtypeNotAllowedError(LimitExceededError):
    """An array frame declares a dtype outside ``Limits.allowed_dtypes``."""


class ShapeNotAllowedError(LimitExceededError):
    """An array's shape has too many axes, an axis too long, or the wrong layout."""


class TransportError(ProtocolError):
    """The socket layer failed (wraps zmq errors so callers never see a raw zmq exception)."""

    code = "unreachable"
    default_hint = "check the endpoint address and that nothing else uses that port"


class DaemonUnreachableError(TransportError):
    """No reply arrived after every retry."""

    code = "unreachable"
    default_hint = (
        "start the daemon with `refiner-daemon serve --bind ENDPOINT` and check that the "
        "add-on uses the same endpoint (and the daemon's CURVE public key, if it uses one)"
    )


class RemoteError(ProtocolError):
    """The daemon answered with an ``ErrorReply``; ``code`` is the code it sent."""

    def __init__(self, code: str, message: str, hint: str, request_id: str = "") -> None:
        self.code = code
        self.request_id = request_id
        super().__init__(f"daemon error [{code}]: {message}", hint=hint)
