"""The messages exchanged between the add-on and the refiner daemon.

One frozen dataclass per message type, registered by its wire name in ``MESSAGE_TYPES``.
Fields are keyword-only. Every message carries a ``request_id``: a reply, an event or an
error carries the id of the request it answers, which is how a client matches them up.

Plain fields travel in the msgpack header; numpy fields (listed in ``ARRAY_FIELDS``) travel
as raw frames (see ``protocol.codec``). Metadata and config dicts must hold JSON types
(str keys; str, int, float, bool, None, lists and dicts); tuples come back as lists.

Construction validates types and layouts (``InvalidFieldError``); ``check_limits`` checks a
message against the configured ``Limits`` (a ``LimitExceededError`` subclass naming the
limit).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from protocol.errors import (
    DtypeNotAllowedError,
    InvalidFieldError,
    ShapeNotAllowedError,
    TooManyCropsError,
)
from protocol.limits import WIRE_DTYPE_NAMES, WIRE_DTYPES, Limits

JOB_KINDS: tuple[str, ...] = ("train_refiner", "train_detector")
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_JOB_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled")

# How deep a metadata/config dict may nest; msgpack would also stop a deeper forgery, but
# a clear error here is kinder.
MAX_JSON_DEPTH = 32
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack can represent


def new_request_id() -> str:
    """A fresh, unique request id."""
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------
# Field checks. They raise InvalidFieldError naming the message, the field and the problem.


def _fail(owner: str, name: str, problem: str) -> InvalidFieldError:
    return InvalidFieldError(f"{owner}.{name}: {problem}")


def _check_str(owner: str, name: str, value: Any, *, allow_empty: bool = True) -> None:
    if not isinstance(value, str):
        raise _fail(owner, name, f"expected str, got {type(value).__name__}")
    if not allow_empty and not value:
        raise _fail(owner, name, "must not be empty")


def _check_int(owner: str, name: str, value: Any, *, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(owner, name, f"expected int, got {type(value).__name__}")
    if not _INT_MIN <= value <= _INT_MAX:
        raise _fail(owner, name, "integer out of the 64-bit range")
    if minimum is not None and value < minimum:
        raise _fail(owner, name, f"must be >= {minimum}, got {value}")


def _check_float(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(owner, name, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _fail(owner, name, f"must be finite, got {value}")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(owner, name, f"{value!r} is not one of {list(choices)}")


# Set while the codec builds a message from a header it unpacked itself: msgpack was told to
# refuse bin and ext types there, so every value is already plain JSON data and walking it
# again would only cost time (it was most of the decode time for crops with metadata).
_FROM_WIRE: contextvars.ContextVar[bool] = contextvars.ContextVar("_FROM_WIRE", default=False)


def _check_jsonable(owner: str, name: str, value: Any, depth: int = 0) -> None:
    """Accept only JSON-like values, so nothing but plain data ever reaches msgpack."""
    if depth == 0 and _FROM_WIRE.get():
        return
    if depth > MAX_JSON_DEPTH:
        raise _fail(owner, name, f"nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise _fail(owner, name, "integer out of the 64-bit range")
        return
    if isinstance(value, float):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_jsonable(owner, name, item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(owner, name, f"dict keys must be str, got {type(key).__name__}")
            _check_jsonable(owner, name, item, depth + 1)
        return
    raise _fail(owner, name, f"{type(value).__name__} is not a JSON type (str, number, bool, "
                             "None, list, dict)")


def _check_dict(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _fail(owner, name, f"expected dict, got {type(value).__name__}")
    _check_jsonable(owner, name, value)


def _check_array(
    owner: str, name: str, value: Any, *, dtype: str, ndim: int, channels: int | None = None
) -> None:
    if not isinstance(value, np.ndarray):
        raise _fail(owner, name, f"expected a numpy array, got {type(value).__name__}")
    if value.dtype != WIRE_DTYPES[dtype]:
        raise _fail(owner, name, f"expected dtype {dtype}, got {value.dtype}")
    if value.ndim != ndim:
        raise _fail(owner, name, f"expected {ndim} axes, got shape {value.shape}")
    if channels is not None and value.shape[-1] != channels:
        raise _fail(owner, name, f"expected {channels} channels last, got shape {value.shape}")


def _as_tuple(owner: str, name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(value)
    raise _fail(owner, name, f"expected a tuple or list, got {type(value).__name__}")


# --------------------------------------------------------------------------------------
# Nested records: small frozen dataclasses carried inside a message's header as dicts.

class WireRecord:
    """A plain record sent as a dict inside a header (not a message on its own)."""

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        owner = cls.__name__
        if not isinstance(data, dict):
            raise InvalidFieldError(f"{owner}: expected a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        missing = sorted(names - set(data))
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise InvalidFieldError(f"{owner}: missing fields {missing}, unknown fields {unknown}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_wire(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_plain(self) -> dict[str, Any]:
        return _to_plain(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class Capabilities(WireRecord):
    """What a daemon offers: its device, models (available and loaded), job kinds, limits."""

    device: str
    models: tuple[str, ...] = ()  # every model the daemon can load
    loaded_models: tuple[str, ...] = ()  # those already in memory (no load delay)
    job_kinds: tuple[str, ...] = JOB_KINDS
    limits: dict[str, Any] = field(default_factory=dict)  # Limits.to_dict()

    def __post_init__(self) -> None:
        owner = "Capabilities"
        _check_str(owner, "device", self.device)
        for name in ("models", "loaded_models", "job_kinds"):
            items = _as_tuple(owner, name, getattr(self, name))
            object.__setattr__(self, name, items)
            for item in items:
                _check_str(owner, name, item)
        _check_dict(owner, "limits", self.limits)


@dataclass(frozen=True, kw_only=True)
class JobInfo(WireRecord):
    """The state of one training job, as the daemon reports it."""

    job_id: str
    kind: str
    state: str
    progress: dict[str, Any] = field(default_factory=dict)  # e.g. {"step": 10, "loss_g": 1.2}
    message: str = ""
    created_at: float = 0.0  # Unix seconds
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        owner = "JobInfo"
        _check_str(owner, "job_id", self.job_id, allow_empty=False)
        _check_choice(owner, "kind", self.kind, JOB_KINDS)
        _check_choice(owner, "state", self.state, JOB_STATES)
        _check_dict(owner, "progress", self.progress)
        _check_str(owner, "message", self.message)
        _check_float(owner, "created_at", self.created_at)
        _check_float(owner, "updated_at", self.updated_at)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_JOB_STATES


def _to_wire(value: Any) -> Any:
    """Turn a field value into msgpack-ready data: records become dicts, and a tuple of
    records a list of dicts. Plain dicts, lists and tuples pass as they are (msgpack packs a
    tuple as an array), so metadata is not copied."""
    if isinstance(value, WireRecord):
        return value.to_dict()
    if isinstance(value, tuple) and value and isinstance(value[0], WireRecord):
        return [item.to_dict() for item in value]
    return value


def _to_plain(value: Any) -> Any:
    """Deep copy with records as dicts and tuples as lists: what a value looks like decoded."""
    if isinstance(value, WireRecord):
        return _to_plain(value.to_dict())
    if isinstance(value, (tuple, list)):
        return [_to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------------------
# Messages.

MESSAGE_TYPES: dict[str, type[Message]] = {}
_HEADER_FIELD_ORDER: dict[type, tuple[str, ...]] = {}
_HEADER_FIELD_SET: dict[type, frozenset[str]] = {}

M = TypeVar("M", bound="Message")


def message_type(wire_name: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a frozen keyword-only dataclass and register it by wire name."""

    def register(cls: type[M]) -> type[M]:
        if wire_name in MESSAGE_TYPES:
            raise ValueError(f"message type {wire_name!r} registered twice")
        cls.TYPE = wire_name
        # eq=False keeps Message.__eq__, which compares numpy fields by value.
        made = dataclass(frozen=True, kw_only=True, eq=False)(cls)
        MESSAGE_TYPES[wire_name] = made
        return made

    return register


def message_class(wire_name: str) -> type[Message]:
    """Look a message class up by its wire name; the error lists the valid names."""
    try:
        return MESSAGE_TYPES[wire_name]
    except KeyError:
        raise KeyError(
            f"unknown message type {wire_name!r}; valid: {sorted(MESSAGE_TYPES)}"
        ) from None


@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """Base of every message. Subclasses set ``ARRAY_FIELDS`` and ``RECORD_FIELDS``."""

    TYPE: ClassVar[str] = ""
    ARRAY_FIELDS: ClassVar[tuple[str, ...]] = ()
    # field name -> (record class, is_tuple) for fields holding WireRecords
    RECORD_FIELDS: ClassVar[dict[str, tuple[type[WireRecord], bool]]] = {}

    request_id: str = field(default_factory=new_request_id)

    def __post_init__(self) -> None:
        _check_str(type(self).__name__, "request_id", self.request_id, allow_empty=False)
        self._validate()

    def _validate(self) -> None:
        """Per-type field checks; raise InvalidFieldError."""

    # ---- equality that understands numpy arrays
    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
                if not (
                    isinstance(mine, np.ndarray)
                    and isinstance(theirs, np.ndarray)
                    and mine.dtype == theirs.dtype
                    and np.array_equal(mine, theirs)
                ):
                    return False
            elif _to_plain(mine) != _to_plain(theirs):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # ---- wire helpers used by protocol.codec
    def header_fields(self) -> dict[str, Any]:
        """The non-array fields as plain msgpack-ready data."""
        return {name: _to_wire(getattr(self, name)) for name in self.header_field_order()}

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields that are present (None ones are left out)."""
        found = {name: getattr(self, name) for name in self.ARRAY_FIELDS}
        return {name: value for name, value in found.items() if value is not None}

    @classmethod
    def header_field_order(cls) -> tuple[str, ...]:
        """Header field names in declaration order (cached: encode calls it every time)."""
        names = _HEADER_FIELD_ORDER.get(cls)
        if names is None:
            names = tuple(
                f.name for f in dataclasses.fields(cls) if f.name not in cls.ARRAY_FIELDS
            )
            _HEADER_FIELD_ORDER[cls] = names
            _HEADER_FIELD_SET[cls] = frozenset(names)
        return names

    @classmethod
    def header_field_names(cls) -> frozenset[str]:
        names = _HEADER_FIELD_SET.get(cls)
        if names is None:
            cls.header_field_order()
            names = _HEADER_FIELD_SET[cls]
        return names

    @classmethod
    def from_wire(cls, body: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """Rebuild a message from decoded header fields and array views (codec's job)."""
        values: dict[str, Any] = dict(body)
        for name, (record, is_tuple) in cls.RECORD_FIELDS.items():
            if name in values:
                raw = values[name]
                if is_tuple:
                    if not isinstance(raw, list):
                        raise InvalidFieldError(f"{cls.__name__}.{name}: expected a list")
                    values[name] = tuple(record.from_dict(item) for item in raw)
                else:
                    values[name] = record.from_dict(raw)
        for name in cls.ARRAY_FIELDS:
            values[name] = arrays.get(name)
        token = _FROM_WIRE.set(True)
        try:
            return cls(**values)
        finally:
            _FROM_WIRE.reset(token)

    # ---- limits
    def check_limits(self, limits: Limits) -> None:
        """Raise a LimitExceededError subclass naming the limit this message breaks.

        Header size is checked by the codec on the packed bytes.
        """
        for name, array in self.arrays().items():
            check_array_spec(name, dtype_name(array), array.shape, limits)
        self.check_type_limits(limits)

    def check_type_limits(self, limits: Limits) -> None:
        """The limits specific to this message type (the decoder has already checked every
        array's dtype and shape against the generic limits, so it calls only this)."""


def dtype_name(array: np.ndarray) -> str:
    """The wire name of an array's dtype (its numpy name if it has none)."""
    name = WIRE_DTYPE_NAMES.get(array.dtype)
    return name if name is not None else str(array.dtype)  # str() only when needed: it is slow


def check_array_spec(name: str, dtype: str, shape: tuple[int, ...], limits: Limits) -> None:
    """Check an array's dtype name and shape against the limits (used before decoding too)."""
    if dtype not in limits.allowed_dtypes:
        raise DtypeNotAllowedError(
            "allowed_dtypes", f"array {name!r} has dtype {dtype!r}; allowed: {list(limits.allowed_dtypes)}"
        )
    if len(shape) > limits.max_array_ndim:
        raise ShapeNotAllowedError(
            "max_array_ndim", f"array {name!r} has {len(shape)} axes (> {limits.max_array_ndim})"
        )
    for axis in shape:
        if axis > limits.max_array_axis:
            raise ShapeNotAllowedError(
                "max_array_axis",
                f"array {name!r} has an axis of length {axis} (> {limits.max_array_axis})",
            )


def _check_crop_batch(owner: str, name: str, array: np.ndarray, limits: Limits) -> None:
    count, height, width = array.shape[:3]
    if count > limits.max_crops:
        raise TooManyCropsError(
            "max_crops", f"{owner}.{name} has {count} crops (> {limits.max_crops})",
            hint=f"split the batch into requests of at most {limits.max_crops} crops",
        )
    if height > limits.max_crop_side or width > limits.max_crop_side:
        raise ShapeNotAllowedError(
            "max_crop_side",
            f"{owner}.{name} crops are {height}x{width} (> {limits.max_crop_side} per side)",
        )


def _check_per_crop(owner: str, images: np.ndarray, name: str, other: np.ndarray | None) -> None:
    """A per-crop companion array (mask, attention) must match the crops' N, H and W."""
    if other is not None and other.shape != images.shape[:3]:
        raise _fail(owner, name, f"shape {other.shape} does not match crops {images.shape[:3]}")


def _normalise_meta(owner: str, meta: Any, count: int) -> tuple[dict[str, Any], ...]:
    items = _as_tuple(owner, "meta", meta)
    if not items:
        return tuple({} for _ in range(count))
    if len(items) != count:
        raise _fail(owner, "meta", f"has {len(items)} entries for {count} crops")
    if _FROM_WIRE.get():  # the codec's msgpack settings already guarantee JSON values
        for item in items:  # a loop: cheaper than all() over a generator, per message
            if type(item) is not dict:
                raise _fail(owner, "meta", "every entry must be a dict")
        return items
    for item in items:
        _check_dict(owner, "meta", item)
    return items


@message_type("handshake")
class Handshake(Message):
    """Client -> daemon: who is asking. The reply says what the daemon offers."""

    client: str = "client"  # a name, e.g. "blender-addon"
    client_version: str = ""  # the client's software version

    def _validate(self) -> None:
        _check_str("Handshake", "client", self.client)
        _check_str("Handshake", "client_version", self.client_version)


@message_type("handshake_reply")
class HandshakeReply(Message):
    """Daemon -> client: the daemon's versions and capabilities."""

    RECORD_FIELDS: ClassVar[dict[str, tuple[type[WireRecord], bool]]] = {"capabilities": (Capabilities, False)}

    daemon_version: str
    protocol_version: int
    capabilities: Capabilities

    def _validate(self) -> None:
        _check_str("HandshakeReply", "daemon_version", self.daemon_version)
        _check_int("HandshakeReply", "protocol_version", self.protocol_version, minimum=0)
        if not isinstance(self.capabilities, Capabilities):
            raise _fail("HandshakeReply", "capabilities", "expected a Capabilities record")


@message_type("refine_request")
class RefineRequest(Message):
    """Client -> daemon: refine N upright crops with the named model.

    crops: uint8 (N, H, W, 3) RGB. masks: optional uint8 (N, H, W), the person's mask in
    each crop. meta: one JSON dict per crop (e.g. ``CropRecord.to_dict()``), echoed back.
    """

    ARRAY_FIELDS = ("crops", "masks")

    model: str
    crops: np.ndarray
    masks: np.ndarray | None = None
    meta: tuple[dict[str, Any], ...] = ()

    def _validate(self) -> None:
        owner = "RefineRequest"
        _check_str(owner, "model", self.model, allow_empty=False)
        _check_array(owner, "crops", self.crops, dtype="uint8", ndim=4, channels=3)
        if self.masks is not None:
            _check_array(owner, "masks", self.masks, dtype="uint8", ndim=3)
        _check_per_crop(owner, self.crops, "masks", self.masks)
        object.__setattr__(self, "meta", _normalise_meta(owner, self.meta, self.crops.shape[0]))

    def check_type_limits(self, limits: Limits) -> None:
        _check_crop_batch("RefineRequest", "crops", self.crops, limits)


@message_type("refine_reply")
class RefineReply(Message):
    """Daemon -> client: the refined crops, in request order.

    images: uint8 (N, H, W, 3). attention: optional float32 (N, H, W) in [0, 1] (attention
    refiners only). meta: the request's metadata, echoed. model_sha256 identifies the weights.
    """

    ARRAY_FIELDS = ("images", "attention")

    model: str
    model_sha256: str = ""
    images: np.ndarray
    attention: np.ndarray | None = None
    meta: tuple[dict[str, Any], ...] = ()
    elapsed_ms: float = 0.0

    def _validate(self) -> None:
        owner = "RefineReply"
        _check_str(owner, "model", self.model, allow_empty=False)
        _check_str(owner, "model_sha256", self.model_sha256)
        _check_array(owner, "images", self.images, dtype="uint8", ndim=4, channels=3)
        if self.attention is not None:
            _check_array(owner, "attention", self.attention, dtype="float32", ndim=3)
        _check_per_crop(owner, self.images, "attention", self.attention)
        object.__setattr__(self, "meta", _normalise_meta(owner, self.meta, self.images.shape[0]))
        _check_float(owner, "elapsed_ms", self.elapsed_ms)

    def check_type_limits(self, limits: Limits) -> None:
        _check_crop_batch("RefineReply", "images", self.images, limits)


@message_type("job_start")
class JobStart(Message):
    """Client -> daemon: start a training job. The reply is a ``JobStatus``.

    Retried requests reuse the request id, so a daemon can tell a resend from a new job.
    """

    kind: str
    config: dict[str, Any] = field(default_factory=dict)

    def _validate(self) -> None:
        _check_choice("JobStart", "kind", self.kind, JOB_KINDS)
        _check_dict("JobStart", "config", self.config)


@message_type("job_query")
class JobQuery(Message):
    """Client -> daemon: ask for one job's status. The reply is a ``JobStatus``."""

    job_id: str

    def _validate(self) -> None:
        _check_str("JobQuery", "job_id", self.job_id, allow_empty=False)


@message_type("job_cancel")
class JobCancel(Message):
    """Client -> daemon: ask a job to stop. The reply is a ``JobStatus``."""

    job_id: str

    def _validate(self) -> None:
        _check_str("JobCancel", "job_id", self.job_id, allow_empty=False)


@message_type("job_list")
class JobList(Message):
    """Client -> daemon: list all jobs. The reply is a ``JobListReply``."""


@message_type("job_subscribe")
class JobSubscribe(Message):
    """Client -> daemon: stream a job's events after sequence number ``after_seq``.

    The daemon answers with a ``JobStatus`` and then pushes ``JobProgress`` messages that
    carry this request's id, until the job finishes.
    """

    job_id: str
    after_seq: int = -1

    def _validate(self) -> None:
        _check_str("JobSubscribe", "job_id", self.job_id, allow_empty=False)
        _check_int("JobSubscribe", "after_seq", self.after_seq, minimum=-1)


@message_type("job_status")
class JobStatus(Message):
    """Daemon -> client: one job's state."""

    RECORD_FIELDS: ClassVar[dict[str, tuple[type[WireRecord], bool]]] = {"job": (JobInfo, False)}

    job: JobInfo

    def _validate(self) -> None:
        if not isinstance(self.job, JobInfo):
            raise _fail("JobStatus", "job", "expected a JobInfo record")


@message_type("job_list_reply")
class JobListReply(Message):
    """Daemon -> client: every job the daemon knows, oldest first."""

    RECORD_FIELDS: ClassVar[dict[str, tuple[type[WireRecord], bool]]] = {"jobs": (JobInfo, True)}

    jobs: tuple[JobInfo, ...] = ()

    def _validate(self) -> None:
        object.__setattr__(self, "jobs", _as_tuple("JobListReply", "jobs", self.jobs))
        if not all(isinstance(job, JobInfo) for job in self.jobs):
            raise _fail("JobListReply", "jobs", "expected JobInfo records")


@message_type("job_progress")
class JobProgress(Message):
    """Daemon -> subscriber: one event of a job (``seq`` counts up from 0)."""

    job_id: str
    seq: int
    state: str
    event: dict[str, Any] = field(default_factory=dict)  # e.g. {"step": 10, "loss_g": 1.2}

    def _validate(self) -> None:
        owner = "JobProgress"
        _check_str(owner, "job_id", self.job_id, allow_empty=False)
        _check_int(owner, "seq", self.seq, minimum=0)
        _check_choice(owner, "state", self.state, JOB_STATES)
        _check_dict(owner, "event", self.event)


@message_type("error")
class ErrorReply(Message):
    """Either side -> the other: a request failed. ``hint`` says what to do about it.

    ``code`` is one of ``protocol.errors.ERROR_CODES``; ``retry_after_ms`` > 0 means the
    request may succeed if sent again after that delay (e.g. code "busy").
    """

    code: str
    message: str
    hint: str = ""
    retry_after_ms: int = 0

    def _validate(self) -> None:
        _check_str("ErrorReply", "code", self.code, allow_empty=False)
        _check_str("ErrorReply", "message", self.message)
        _check_str("ErrorReply", "hint", self.hint)
        _check_int("ErrorReply", "retry_after_ms", self.retry_after_ms, minimum=0)
