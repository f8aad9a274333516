"""Fast in-process refinement of person crops with a trained generator (uint8 in, uint8 out).

:class:`Refiner` loads a file written by :func:`refiner_daemon.refiner.training.export_refiner`
(``torch.load(..., weights_only=True)``), checks its sha256, and refines batches of crops under
``torch.inference_mode``. Reduced precision (float16 on CUDA, bfloat16 on CPUs with native bf16
support) is used only after checking, on the first batch, that it changes the uint8 output by
at most :data:`MAX_MEAN_ABS_DIFF` on average and :data:`MAX_P99_ABS_DIFF` at the 99th
percentile against float32; otherwise the refiner stays in float32. The decision and the
measured differences are kept in :attr:`Refiner.precision_check`.

On CPU, bfloat16 runs bfloat16 copies of the networks (made once) rather than autocast, which
casts every weight again on every call: same outputs, about 10 % faster.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from refiner_daemon.common.checkpoints import load_checkpoint
from refiner_daemon.refiner.data import tensor_to_uint8, uint8_to_tensor
from refiner_daemon.refiner.training import (
    REFINER_FORMAT,
    ModelSpec,
    cpu_has_native_bf16,
    resolve_device,
    state_dict_sha256,
)

MAX_MEAN_ABS_DIFF = 1.0   # uint8 levels
MAX_P99_ABS_DIFF = 4.0    # uint8 levels
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass
class RefineOutput:
    images: np.ndarray            # uint8 (N, H, W, 3)
    attention: np.ndarray | None  # float32 (N, H, W) in [0, 1]; AGGAN only


class Refiner:
    """A trained synthetic-to-real generator ready to refine crops."""

    def __init__(self, spec: ModelSpec, generator_state: dict[str, torch.Tensor],
                 attention_state: dict[str, torch.Tensor] | None, config: dict[str, Any],
                 sha256: str, *, device: str = "auto", precision: str = "auto",
                 max_batch: int = 32) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}; valid: {PRECISIONS}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.spec = spec
        self.config = config
        self.sha256 = sha256
        self.name = str(config.get("name", "refiner"))
        self.crop_size: tuple[int, int] = tuple(spec.crop_size)  # type: ignore[assignment]
        torch_device = resolve_device(device)
        self.device = str(torch_device)
        self.max_batch = max_batch
        self._memory_format = (torch.channels_last if torch_device.type == "cuda"
                               else torch.contiguous_format)
        self.generator = spec.build_generator()
        self.generator.load_state_dict(generator_state)
        self.attention = spec.build_attention()
        if self.attention is not None:
            if attention_state is None:
                raise ValueError("AGGAN refiner file has no attention network weights")
            self.attention.load_state_dict(attention_state)
        for net in (self.generator, self.attention):
            if net is not None:
                net.eval().to(torch_device, memory_format=self._memory_format)
                for param in net.parameters():
                    param.requires_grad_(False)
        self._cpu_bf16_nets: tuple[torch.nn.Module, torch.nn.Module | None] | None = None
        self.requested_precision = precision
        self.precision = "fp32" if precision == "auto" else precision
        self._precision_decided = precision != "auto"
        self.precision_check: dict[str, Any] = {"decided": "requested" if precision != "auto"
                                                else "pending"}

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", precision: str = "auto",
             max_batch: int = 32) -> Refiner:
        """Load ``path`` (a refiner ``.pt`` or a training run folder holding ``refiner.pt``)."""
        file = Path(path)
        if file.is_dir():
            file = file / "refiner.pt"
        if not file.is_file():
            raise FileNotFoundError(f"refiner file {file} not found; train one with "
                                    "`python -m refiner_daemon.refiner.train` or pass its path")
        payload = load_checkpoint(file, what="refiner file")  # CheckpointError is a ValueError
        if not isinstance(payload, dict) or payload.get("format") != REFINER_FORMAT:
            raise ValueError(f"{file} is not a refiner file (expected format {REFINER_FORMAT!r}; "
                             "a training checkpoint is not one: use <run_dir>/refiner.pt)")
        config = payload["config"]
        sha = state_dict_sha256(config, {"generator": payload["generator"],
                                         "attention": payload["attention"]})
        if sha != payload["sha256"]:
            raise ValueError(f"{file}: sha256 mismatch (stored {payload['sha256'][:12]}, "
                             f"computed {sha[:12]}); the file is corrupted or was modified")
        spec = ModelSpec.from_dict(config["model"])
        return cls(spec, payload["generator"], payload["attention"], config, sha,
                   device=device, precision=precision, max_batch=max_batch)

    # -- precision

    def _autocast(self, precision: str) -> contextlib.AbstractContextManager[Any]:
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        if precision == "fp16":
            return torch.autocast(device_type=device_type, dtype=torch.float16)
        if precision == "bf16":
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _candidate_precision(self) -> str | None:
        if self.device.startswith("cuda"):
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else None

    def _decide_precision(self, probe: torch.Tensor) -> None:
        """Use reduced precision only if it keeps the uint8 output within tolerance."""
        candidate = self._candidate_precision()
        self._precision_decided = True
        if candidate is None:
            self.precision_check = {"decided": "fp32", "reason": "no fast reduced precision here"}
            return
        reference, _ = self._forward(probe, "fp32")
        reduced, _ = self._forward(probe, candidate)
        diff = ((reference.float() - reduced.float()).abs() * 127.5).flatten()
        mean, p99 = float(diff.mean()), float(torch.quantile(diff[:1_000_000].float(), 0.99))
        accepted = mean <= MAX_MEAN_ABS_DIFF and p99 <= MAX_P99_ABS_DIFF
        self.precision = candidate if accepted else "fp32"
        self.precision_check = {"decided": self.precision, "candidate": candidate,
                                "mean_abs_diff_u8": mean, "p99_abs_diff_u8": p99,
                                "max_abs_diff_u8": float(diff.max()), "accepted": accepted}

    # -- refinement

    def _forward(self, batch: torch.Tensor, precision: str
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if precision == "bf16" and not self.device.startswith("cuda"):
            return self._forward_cpu_bf16(batch)
        with self._autocast(precision):
            raw = self.generator(batch)
            if self.attention is None:
                return raw.float(), None
            att = self.attention(batch).float()
        out = att * raw.float() + (1.0 - att) * batch.float()
        return out, att

    def _forward_cpu_bf16(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """bfloat16 on CPU through bfloat16 copies of the networks (made once, on first use)."""
        if self._cpu_bf16_nets is None:
            self._cpu_bf16_nets = (
                copy.deepcopy(self.generator).to(torch.bfloat16),
                None if self.attention is None else copy.deepcopy(self.attention).to(torch.bfloat16))
        generator, attention = self._cpu_bf16_nets
        low = batch.to(torch.bfloat16)
        raw = generator(low).float()
        if attention is None:
            return raw, None
        att = attention(low).float()
        return att * raw + (1.0 - att) * batch.float(), att

    @torch.inference_mode()
    def refine(self, crops: np.ndarray) -> RefineOutput:
        """Refine uint8 crops (N, H, W, C); C is the model's channels (3, or 1 for a greyscale
        refiner); any H, W (reflect-padded to a multiple of 4)."""
        c = self.spec.channels
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8:
            raise TypeError(f"crops must be a uint8 numpy array of shape (N, H, W, {c})")
        if crops.ndim == 3 and c == 3:
            raise ValueError(f"crops has shape {crops.shape}; add a batch axis: crops[None]")
        if crops.ndim != 4 or crops.shape[-1] != c or min(crops.shape[1:3], default=0) < 4:
            raise ValueError(f"crops must have shape (N, H, W, {c}) with H, W >= 4; got {crops.shape}")
        n, h, w, _ = crops.shape
        if n == 0:
            return RefineOutput(np.zeros_like(crops),
                                None if self.attention is None else np.zeros((0, h, w), np.float32))
        pad_h, pad_w = (-h) % 4, (-w) % 4
        images, maps = [], []
        for start in range(0, n, self.max_batch):
            batch = uint8_to_tensor(np.ascontiguousarray(crops[start:start + self.max_batch]))
            batch = batch.to(self.device).contiguous(memory_format=self._memory_format)
            if pad_h or pad_w:
                # Reflection needs the pad to be smaller than the side; replicate covers tiny crops.
                mode = "reflect" if pad_h < h and pad_w < w else "replicate"
                batch = F.pad(batch, (0, pad_w, 0, pad_h), mode=mode)
            if not self._precision_decided:
                self._decide_precision(batch[:4])
            out, att = self._forward(batch, self.precision)
            images.append(tensor_to_uint8(out[:, :, :h, :w]))
            if att is not None:
                maps.append(att[:, 0, :h, :w].clamp(0, 1).cpu().numpy().astype(np.float32))
        return RefineOutput(np.concatenate(images), np.concatenate(maps) if maps else None)
