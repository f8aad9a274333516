"""Encode messages into zmq frames and decode frames back, without pickle and without copies.

Wire format of one message (a zmq multipart message):

    frame 0: msgpack map {"v": PROTOCOL_VERSION, "type": wire name, "body": {header fields},
                          "arrays": [{"field": name, "dtype": "uint8", "shape": [N, H, W, 3]}, ...]}
    frame 1..k: the raw, C-ordered, little-endian bytes of each array, in "arrays" order.

Encoding hands zmq memoryviews over the arrays' own memory (send with ``copy=False``).
Decoding builds read-only ``np.frombuffer`` views over the received frames. Before any view
is made, the declared shape times the item size must equal the frame's actual length, so a
forged header can never make the decoder allocate what it claims. The msgpack header is
read with ``raw=False``, ``strict_map_key=True`` and no ext types.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from protocol.errors import (
    InvalidFieldError,
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    UnknownMessageTypeError,
    VersionMismatchError,
)
from protocol.limits import DEFAULT_LIMITS, WIRE_DTYPES, Limits
from protocol.messages import MESSAGE_TYPES, Message, check_array_spec, dtype_name
from protocol.version import PROTOCOL_VERSION

Frame = Any  # bytes, bytearray, memoryview, or anything with a ``.buffer`` (a zmq.Frame)
HEADER_KEYS = frozenset({"v", "type", "body", "arrays"})
ARRAY_SPEC_KEYS = frozenset({"field", "dtype", "shape"})


_PACKERS = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's msgpack Packer: reusing one saves building it (about 1 us) per message.

    One per thread because a Packer holds its output buffer between calls; it resets the
    buffer itself after each ``pack``, also when packing fails.
    """
    packer = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MalformedMessageError(f"msgpack extension type {code} is not allowed in a header")


def encode(
    message: Message, *, limits: Limits = DEFAULT_LIMITS, version: int = PROTOCOL_VERSION
) -> list[bytes | memoryview]:
    """Frames for ``message``: a msgpack header and one zero-copy memoryview per array.

    The arrays must stay unchanged until zmq has sent them (zmq reads them in the background
    when sent with ``copy=False``). ``version`` exists so tests can speak another version.
    """
    if not isinstance(message, Message) or type(message).TYPE not in MESSAGE_TYPES:
        raise MalformedMessageError(
            f"cannot encode {type(message).__name__}: not a registered message type; "
            f"valid: {sorted(MESSAGE_TYPES)}"
        )
    # check_limits, with the arrays looked up once (encode is on every request's path).
    arrays = message.arrays()
    specs: list[dict[str, Any]] = []
    frames: list[bytes | memoryview] = []
    array_bytes = 0
    for name, array in arrays.items():
        wire_dtype = dtype_name(array)
        check_array_spec(name, wire_dtype, array.shape, limits)
        # Only a non-contiguous array is copied; the usual C-ordered batch is sent in place.
        contiguous = np.ascontiguousarray(array)
        specs.append({"field": name, "dtype": wire_dtype, "shape": list(contiguous.shape)})
        frames.append(memoryview(contiguous.reshape(-1).view(np.uint8)))
        array_bytes += contiguous.nbytes
    message.check_type_limits(limits)
    try:
        header = _packer().pack(
            {"v": version, "type": message.TYPE, "body": message.header_fields(),
             "arrays": specs}
        )
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. metadata nested too deeply
        raise MalformedMessageError(f"cannot pack the {message.TYPE} header: {exc}") from None
    total = len(header) + array_bytes
    if len(header) > limits.max_header_bytes:
        raise MessageTooLargeError(
            "max_header_bytes", f"header is {len(header)} bytes (> {limits.max_header_bytes})",
            hint="move bulky data out of the metadata dicts",
        )
    if total > limits.max_message_bytes:
        raise MessageTooLargeError(
            "max_message_bytes", f"message is {total} bytes (> {limits.max_message_bytes})",
            hint="send fewer or smaller crops per request",
        )
    return [header, *frames]


def _as_bytes_view(frame: Frame, index: int) -> memoryview:
    """A flat byte view of a frame, without copying it."""
    source = getattr(frame, "buffer", frame)
    try:
        view = memoryview(source)
    except TypeError:
        raise MalformedMessageError(
            f"frame {index} is a {type(frame).__name__}, not a bytes-like object"
        ) from None
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _unpack_header(view: memoryview) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            # No bin and no ext values (timestamps included): a header then holds only
            # JSON types, which lets message construction skip re-checking them.
            max_bin_len=0,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # ValueError covers ExtraData, FormatError, StackError, bad UTF-8, non-str map keys.
        raise MalformedMessageError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedMessageError(f"header must be a map, got {type(header).__name__}")
    return header


def _check_version(header: dict[str, Any], version: int) -> None:
    remote = header.get("v")
    if remote == version and type(remote) is int:
        return
    # Say what the peer said when it sent an error (its refusal usually explains itself).
    detail = ""
    body = header.get("body")
    if header.get("type") == "error" and isinstance(body, dict):
        detail = str(body.get("message", ""))[:500]
    raise VersionMismatchError(version, remote, detail)


def decode(
    frames: Sequence[Frame], *, limits: Limits = DEFAULT_LIMITS, version: int = PROTOCOL_VERSION
) -> Message:
    """Decode frames into a Message. Raises only ``ProtocolError`` subclasses.

    Array fields of the result are read-only views over ``frames``; keep the frames alive
    (numpy does, through the view's base) and copy an array before writing into it.
    """
    if not isinstance(frames, (list, tuple)):
        raise MalformedMessageError(f"frames must be a list, got {type(frames).__name__}")
    if not frames:
        raise MalformedMessageError("empty message: no header frame")
    if len(frames) > limits.max_frames:
        raise MessageTooLargeError(
            "max_frames", f"message has {len(frames)} frames (> {limits.max_frames})"
        )
    views = []
    total = 0
    for index, frame in enumerate(frames):
        view = _as_bytes_view(frame, index)
        views.append(view)
        total += view.nbytes
    if total > limits.max_message_bytes:
        raise MessageTooLargeError(
            "max_message_bytes", f"message is {total} bytes (> {limits.max_message_bytes})"
        )
    if views[0].nbytes > limits.max_header_bytes:
        raise MessageTooLargeError(
            "max_header_bytes", f"header is {views[0].nbytes} bytes (> {limits.max_header_bytes})"
        )

    header = _unpack_header(views[0])
    _check_version(header, version)
    if header.keys() != HEADER_KEYS:
        raise MalformedMessageError(
            f"header keys {sorted(map(str, header))} != expected {sorted(HEADER_KEYS)}"
        )
    type_name = header["type"]
    if not isinstance(type_name, str) or type_name not in MESSAGE_TYPES:
        raise UnknownMessageTypeError(
            f"unknown message type {type_name!r}; valid: {sorted(MESSAGE_TYPES)}",
            hint="upgrade the side that does not know this message type",
        )
    cls = MESSAGE_TYPES[type_name]

    body = header["body"]
    if not isinstance(body, dict):
        raise MalformedMessageError(f"{type_name} body must be a map, got {type(body).__name__}")
    expected_fields = cls.header_field_names()
    if body.keys() != expected_fields:
        missing = sorted(expected_fields - set(body))
        unknown = sorted(set(body) - expected_fields)
        raise MalformedMessageError(
            f"{type_name} header fields: missing {missing}, unknown {unknown}"
        )

    arrays = _decode_arrays(type_name, cls, header["arrays"], views[1:], limits)
    try:
        message = cls.from_wire(body, arrays)
    except TypeError as exc:  # a field the constructor itself rejects
        raise InvalidFieldError(f"{type_name}: {exc}") from None
    message.check_type_limits(limits)  # arrays were checked above, before any view was made
    return message


def _all_sizes(shape: list[Any]) -> bool:
    """Every axis is a plain non-negative int (a loop: cheaper than all() over a generator)."""
    for axis in shape:
        if type(axis) is not int or axis < 0:
            return False
    return True


def _decode_arrays(
    type_name: str,
    cls: type[Message],
    specs: Any,
    views: list[memoryview],
    limits: Limits,
) -> dict[str, np.ndarray]:
    if not isinstance(specs, list):
        raise MalformedMessageError(f"{type_name} 'arrays' must be a list")
    if len(specs) != len(views):
        raise MalformedMessageError(
            f"{type_name} header declares {len(specs)} array(s) but {len(views)} array frame(s) "
            "arrived"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, (spec, view) in enumerate(zip(specs, views), start=1):
        if not isinstance(spec, dict) or spec.keys() != ARRAY_SPEC_KEYS:
            raise MalformedMessageError(
                f"{type_name} array spec {index} must be a map with keys {sorted(ARRAY_SPEC_KEYS)}"
            )
        name, wire_dtype, shape = spec["field"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or name not in cls.ARRAY_FIELDS:
            raise MalformedMessageError(
                f"{type_name} has no array field {name!r}; valid: {list(cls.ARRAY_FIELDS)}"
            )
        if name in arrays:
            raise MalformedMessageError(f"{type_name} array field {name!r} sent twice")
        if not isinstance(wire_dtype, str) or wire_dtype not in WIRE_DTYPES:
            raise MalformedMessageError(
                f"{type_name}.{name}: unknown dtype {wire_dtype!r}; valid: {sorted(WIRE_DTYPES)}"
            )
        if not isinstance(shape, list) or not _all_sizes(shape):
            raise MalformedMessageError(
                f"{type_name}.{name}: shape must be a list of non-negative ints, got {shape!r}"
            )
        check_array_spec(name, wire_dtype, tuple(shape), limits)
        dtype = WIRE_DTYPES[wire_dtype]
        # Python ints do not overflow: a forged shape cannot wrap around to a small size.
        expected = math.prod(shape) * dtype.itemsize
        if expected != view.nbytes:
            raise MalformedMessageError(
                f"{type_name}.{name}: shape {shape} x {dtype.itemsize} bytes = {expected} bytes, "
                f"but its frame has {view.nbytes} bytes"
            )
        # The size was checked just above, so the array covers exactly the frame.
        array = np.ndarray(shape, dtype=dtype, buffer=view)
        array.flags.writeable = False
        arrays[name] = array
    return arrays


def peek_request_id(frames: Sequence[Frame]) -> str:
    """Best-effort request id of a message that may not decode, for addressing an error reply.

    Never raises; returns "" when the header is unreadable.
    """
    try:
        view = _as_bytes_view(frames[0], 0)
        if view.nbytes > DEFAULT_LIMITS.max_header_bytes:
            return ""
        header = _unpack_header(view)
        request_id = header.get("body", {}).get("request_id", "")
        return request_id[:200] if isinstance(request_id, str) else ""
    except Exception:  # noqa: BLE001 - a malformed message must never break error handling
        return ""
