"""Limits on what one message may carry, checked on both encode and decode.

A decoder that trusts a forged header can be made to allocate gigabytes; these limits, and
the rule that an array frame's length must equal its declared shape times its item size,
keep every decode bounded by the bytes that actually arrived.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

# The only dtypes that may travel as array frames. Little-endian on the wire, whatever the
# sender's platform, so a frame is interpreted the same everywhere.
WIRE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}

# The reverse lookup, for naming an array's dtype on the wire.
WIRE_DTYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in WIRE_DTYPES.items()}

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one message may carry. Both sides must use compatible limits.

    max_message_bytes: all frames together (header plus arrays).
    max_header_bytes: the msgpack header frame.
    max_frames: header plus array frames.
    max_crops: crops in one refine request or reply.
    max_crop_side: height and width of one crop, in pixels.
    max_array_ndim / max_array_axis: any array's number of axes and length of one axis.
    allowed_dtypes: names from ``WIRE_DTYPES``.
    """

    max_message_bytes: int = 256 * MIB
    max_header_bytes: int = 4 * MIB
    max_frames: int = 16
    max_crops: int = 256
    max_crop_side: int = 1024
    max_array_ndim: int = 4
    max_array_axis: int = 4096
    allowed_dtypes: tuple[str, ...] = ("uint8", "float32")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "allowed_dtypes":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{field.name} must be a positive int, got {value!r}")
        if self.max_header_bytes > self.max_message_bytes:
            raise ValueError("Limits.max_header_bytes must not exceed Limits.max_message_bytes")
        if self.max_frames < 2:
            raise ValueError("Limits.max_frames must be at least 2 (a header and one array)")
        if not isinstance(self.allowed_dtypes, tuple) or not self.allowed_dtypes:
            raise ValueError("Limits.allowed_dtypes must be a non-empty tuple of dtype names")
        unknown = [name for name in self.allowed_dtypes if name not in WIRE_DTYPES]
        if unknown:
            raise ValueError(
                f"Limits.allowed_dtypes has unknown dtype(s) {unknown}; valid: {sorted(WIRE_DTYPES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["allowed_dtypes"] = list(self.allowed_dtypes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Limits field(s) {unknown}; valid: {sorted(known)}")
        values = dict(data)
        if "allowed_dtypes" in values:
            values["allowed_dtypes"] = tuple(values["allowed_dtypes"])
        return cls(**values)


DEFAULT_LIMITS = Limits()
