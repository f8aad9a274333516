"""Training of the GAN refiner: CycleGAN (thesis Algorithm 8) and AGGAN (Algorithm 9).

Reads top to bottom: the run configuration (:class:`RefinerConfig`), the model bundle and its
training step (:class:`RefinerTrainer`: forward; generators step with the discriminators frozen;
discriminators step on pooled fakes; returns a dict of losses), checkpointing, then
:func:`train_refiner`, the loop that ties them together, and :func:`export_refiner`, which
writes the generator file that :class:`refiner_daemon.refiner.inference.Refiner` loads.

Domains: X is synthetic crops, Y is real crops; G: X -> Y is the refiner, F: Y -> X its
inverse; D_X and D_Y are the discriminators; A_X and A_Y are AGGAN's attention networks.

Under ``torchrun`` (:mod:`refiner_daemon.common.distributed`) each process trains on its share
of every global batch of ``batch_size x world size`` crops (the batches one process with that
batch size would draw), the networks are wrapped in DistributedDataParallel so gradients are
averaged, logged losses are averaged over the processes, and only rank 0 writes files. Every
loss except the mean-feature term is a mean over images, so the averaged gradients equal the
single-process ones; InstanceNorm is per image. What differs: the mean-feature term compares
each process's own batch mean; each process keeps its own image pool (``pool_size`` each, seeded
per rank), and a resumed run starts every process from rank 0's pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protocol.fileio import atomic_write_json
from refiner_daemon.common.checkpoints import load_checkpoint
from refiner_daemon.common.devices import resolve_device
from refiner_daemon.common.distributed import DistributedContext, session
from refiner_daemon.refiner import losses as L
from refiner_daemon.refiner.data import CropFolder, UnpairedBatches
from refiner_daemon.refiner.image_pool import ImagePool
from refiner_daemon.refiner.networks import (
    AttentionNet,
    PatchDiscriminator,
    ResnetGenerator,
    composite,
    threshold_foreground,
)
from refiner_daemon.refiner.perceptual import FeatureExtractor, build_extractor, describe
from refiner_daemon.refiner.presets import ARCHITECTURES, PRESETS, LossWeights, Preset, get_preset

CHECKPOINT_FORMAT = "fisheye-refiner-checkpoint/1"
REFINER_FORMAT = "fisheye-refiner/1"

# Fields that may change between a run and its resumption; everything else must match.
_RESUMABLE_CHANGES = {"run_dir", "resume", "device", "amp", "channels_last", "checkpoint_every",
                      "log_every", "image_every", "max_steps", "progress", "tensorboard",
                      "val_synthetic_dir", "val_real_dir", "val_every", "val_max_crops"}
CALIBRATION_CROPS = 8  # crops per domain in the feature-calibration batch


# --------------------------------------------------------------------------- configuration

@dataclass
class RefinerConfig:
    """Everything a refiner training run depends on; saved as ``<run_dir>/config.json``."""

    run_dir: str
    synthetic_dir: str
    real_dir: str
    preset: str = "C_CP"
    epochs: int = 160
    batch_size: int = 1
    crop_size: tuple[int, int] = (128, 128)  # (height, width); crops are resized to it
    width: int = 64               # generator filters in the first convolution (AGGAN paper: 32)
    disc_width: int = 64
    disc_strided: int = 3         # stride-2 blocks of the PatchGAN (3: 70x70; 2 for 28x28 digits)
    channels: int = 3             # 3: RGB crops; 1: greyscale (e.g. digits)
    n_blocks: int = 9
    attention_width: int = 32
    seed: int = 0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    pool_size: int = 50
    switch_epoch: int = 30        # AGGAN: attention stops training, D sees foregrounds
    tau: float = 0.1              # AGGAN foreground threshold (Eq. 2.14-2.15)
    perceptual: str = "auto"      # auto | vgg16 | mobilenet_v2 (only loaded if a loss needs it)
    perceptual_weights: str | None = None
    feature_layers: list[str] | None = None  # None: the preset's layers
    disc_layers: list[int] | None = None     # None: the preset's layers
    loss_weights: dict[str, float] = field(default_factory=dict)  # overrides the preset's
    mean_feature_samples: int = 256  # target crops averaged for the mean-feature loss
    # Share of the generator objective the weighted feature terms make up at calibration (the
    # start of training); None: the preset's ``feature_share``; 0: raw lambdas, no calibration.
    feature_share: float | None = None
    flip: bool = True             # random horizontal flips
    checkpoint_every: int = 1000  # steps
    resume: bool = False
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    amp: bool = True              # bfloat16 autocast on CUDA and on CPUs with native bf16
    channels_last: bool = True    # CUDA only
    log_every: int = 50
    image_every: int = 500
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True
    tensorboard: bool = True
    # Validation on held-out crops (refiner_daemon.refiner.validation): S_val, synthetic crops the
    # refiner does not train on, and R_val, real crops it never sees, cut with the same crop
    # rule. Every ``val_every`` steps (and at the end): FD/KID of G(S_val) to R_val, the head
    # structure check, a contact sheet; the best non-harmful step by FD is exported as
    # ``model_best.pt``. Off unless both folders are given.
    val_synthetic_dir: str | None = None
    val_real_dir: str | None = None
    val_every: int = 500
    val_max_crops: int = 64

    # -- construction and validation

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinerConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown refiner config field(s) {unknown}; valid: {sorted(valid)}")
        values = dict(data)
        if "crop_size" in values:
            values["crop_size"] = tuple(int(v) for v in values["crop_size"])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_size"] = list(self.crop_size)
        return data

    def validate(self) -> RefinerConfig:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"RefinerConfig.{name} = {getattr(self, name)!r}: {why}")

        for name in ("run_dir", "synthetic_dir", "real_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                fail(name, "must be a non-empty path")
        if self.preset not in PRESETS:
            fail("preset", f"unknown preset; valid: {sorted(PRESETS)}")
        for name in ("epochs", "batch_size", "width", "disc_width", "attention_width",
                     "checkpoint_every", "log_every", "image_every", "mean_feature_samples",
                     "val_every", "val_max_crops"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "must be an integer >= 1")
        for name in ("n_blocks", "pool_size", "switch_epoch", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "must be an integer >= 0")
        if (len(self.crop_size) != 2 or any(not isinstance(v, int) for v in self.crop_size)
                or any(v < 16 or v % 4 for v in self.crop_size)):
            fail("crop_size", "must be (height, width), each a multiple of 4 and >= 16")
        if not (self.lr > 0):
            fail("lr", "must be > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                fail(name, "must be in [0, 1)")
        if not 0 <= self.tau < 1:
            fail("tau", "must be in [0, 1)")
        if self.perceptual not in ("auto", "vgg16", "mobilenet_v2"):
            fail("perceptual", "must be one of auto, vgg16, mobilenet_v2")
        if self.channels not in (1, 3):
            fail("channels", "must be 1 (greyscale) or 3 (RGB)")
        if self.disc_strided not in (1, 2, 3):
            fail("disc_strided", "must be 1, 2 or 3")
        if self.feature_share is not None and not 0 <= self.feature_share < 1:
            fail("feature_share", "must be in [0, 1) or None (the preset's)")
        if (self.val_synthetic_dir is None) != (self.val_real_dir is None):
            fail("val_real_dir" if self.val_real_dir is None else "val_synthetic_dir",
                 "validation needs both val_synthetic_dir and val_real_dir")
        if self.max_steps is not None and self.max_steps < 1:
            fail("max_steps", "must be >= 1 or None")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            fail("device", "must be auto, cpu, cuda or cuda:N")
        try:
            LossWeights.from_dict({**self.preset_obj().weights.to_dict(), **self.loss_weights})
        except ValueError as exc:
            fail("loss_weights", str(exc))
        if self.disc_layers is not None and any(
                j not in range(1, PatchDiscriminator.N_FEATURE_LAYERS + 1) for j in self.disc_layers):
            fail("disc_layers", f"layers are 1..{PatchDiscriminator.N_FEATURE_LAYERS}")
        return self

    # -- derived values

    def preset_obj(self) -> Preset:
        return get_preset(self.preset)

    def weights(self) -> LossWeights:
        return LossWeights.from_dict({**self.preset_obj().weights.to_dict(), **self.loss_weights})

    def effective_feature_share(self) -> float:
        """The share the feature terms get at calibration; 0 when there is none to calibrate."""
        weights = self.weights()
        if not any(getattr(weights, name) > 0 for name in L.FEATURE_TERMS):
            return 0.0
        return (self.preset_obj().feature_share if self.feature_share is None
                else float(self.feature_share))

    def layers(self) -> tuple[str, ...]:
        return tuple(self.feature_layers or self.preset_obj().feature_layers)

    def discriminator_layers(self) -> tuple[int, ...]:
        return tuple(self.disc_layers or self.preset_obj().disc_layers or (1, 2, 3, 4))

    def model_spec(self) -> ModelSpec:
        preset = self.preset_obj()
        return ModelSpec(architecture=preset.architecture, width=self.width,
                         n_blocks=self.n_blocks, skip=preset.skip,
                         attention_width=self.attention_width, crop_size=tuple(self.crop_size),
                         channels=self.channels)


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild the refiner's generator (and attention network)."""

    architecture: str = "cyclegan"
    width: int = 64
    n_blocks: int = 9
    skip: bool = False
    attention_width: int = 32
    crop_size: tuple[int, int] = (128, 128)
    channels: int = 3

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"ModelSpec.architecture {self.architecture!r}; valid: {ARCHITECTURES}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "crop_size": list(self.crop_size)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "crop_size": tuple(data["crop_size"])})

    def build_generator(self) -> ResnetGenerator:
        return ResnetGenerator(width=self.width, n_blocks=self.n_blocks, skip=self.skip,
                               channels=self.channels)

    def build_attention(self) -> AttentionNet | None:
        return (AttentionNet(width=self.attention_width, channels=self.channels)
                if self.architecture == "aggan" else None)


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX (Linux /proc/cpuinfo): there bfloat16
    convolutions run natively and several times faster than float32 ones."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_requires_grad(modules: list[nn.Module | None], flag: bool) -> None:
    for module in modules:
        if module is not None:
            for param in module.parameters():
                param.requires_grad_(flag)


# --------------------------------------------------------------------------- the model bundle

class RefinerTrainer:
    """Generators, discriminators, attention networks, optimisers, schedulers and pools of one run,
    with CycleGAN's training step."""

    def __init__(self, cfg: RefinerConfig, *, steps_per_epoch: int,
                 device: torch.device | None = None,
                 extractor: FeatureExtractor | None = None,
                 dist: DistributedContext | None = None) -> None:
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.dist = dist or DistributedContext()
        self.weights = cfg.weights()
        self.spec = cfg.model_spec()
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = cfg.epochs * steps_per_epoch
        on_cuda = self.device.type == "cuda"
        # bfloat16 autocast: no loss scaling needed; on the CPU only where bf16 is native.
        self.amp = cfg.amp and (torch.cuda.is_bf16_supported() if on_cuda
                                else cpu_has_native_bf16())
        self.memory_format = (torch.channels_last if cfg.channels_last and on_cuda
                              else torch.contiguous_format)

        torch.manual_seed(cfg.seed)
        self.G = self.spec.build_generator()
        self.F = self.spec.build_generator()
        self.A_X = self.spec.build_attention()
        self.A_Y = self.spec.build_attention()
        self.D_X = PatchDiscriminator(width=cfg.disc_width, channels=cfg.channels,
                                      n_strided=cfg.disc_strided)
        self.D_Y = PatchDiscriminator(width=cfg.disc_width, channels=cfg.channels,
                                      n_strided=cfg.disc_strided)
        for net in self.networks().values():
            net.to(self.device, memory_format=self.memory_format)
        # What the training step calls where gradients must be averaged over processes: the
        # DDP wrappers (the networks themselves in one process). Frozen networks (D in the
        # generator step, A after the switch) are called unwrapped: DDP would wait for
        # gradients that never come.
        self.train_nets = {name: self.dist.wrap(net, self.device)
                           for name, net in self.networks().items()}

        self.extractor = extractor
        if self.extractor is None and self.weights.uses_perceptual():
            self.extractor = build_extractor(cfg.perceptual, cfg.layers(), cfg.perceptual_weights)
        if self.extractor is not None:
            self.extractor.to(self.device, memory_format=self.memory_format)
        self.mean_features: dict[str, dict[str, torch.Tensor]] | None = None
        # Feature-term calibration (issue 13): measured once on the calibration batch, then
        # checkpointed so a resumed run uses the same scales.
        self.feature_share = cfg.effective_feature_share()
        self.feature_calibration: dict[str, Any] | None = None

        betas = (cfg.beta1, cfg.beta2)
        gen_params = list(self.G.parameters()) + list(self.F.parameters())
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "G": torch.optim.Adam(gen_params, lr=cfg.lr, betas=betas),
            "D": torch.optim.Adam(list(self.D_X.parameters()) + list(self.D_Y.parameters()),
                                  lr=cfg.lr, betas=betas),
        }
        if self.A_X is not None and self.A_Y is not None:
            self.optimizers["A"] = torch.optim.Adam(
                list(self.A_X.parameters()) + list(self.A_Y.parameters()), lr=cfg.lr, betas=betas)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: self.lr_factor(step))
                           for name, opt in self.optimizers.items()}
        # Rank 0 draws what a single process draws; the others their own streams.
        pool_seed = cfg.seed * 2 + 1_000_003 * self.dist.rank
        self.pool_fake_x = ImagePool(cfg.pool_size, seed=pool_seed + 1)
        self.pool_fake_y = ImagePool(cfg.pool_size, seed=pool_seed + 2)

    # -- small helpers

    def networks(self) -> dict[str, nn.Module]:
        nets = {"G": self.G, "F": self.F, "D_X": self.D_X, "D_Y": self.D_Y}
        if self.A_X is not None and self.A_Y is not None:
            nets.update(A_X=self.A_X, A_Y=self.A_Y)
        return nets

    def lr_factor(self, step: int) -> float:
        """Constant for the first half of training, then linear decay to zero (Algorithms 8-9)."""
        half = self.total_steps / 2
        return 1.0 if step < half else max(0.0, (self.total_steps - step) / half)

    def attention_trainable(self, epoch: int) -> bool:
        return self.A_X is not None and epoch < self.cfg.switch_epoch

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def compute_mean_features(self, synthetic: CropFolder, real: CropFolder) -> None:
        """Mean perceptual features of each domain (the targets of Eq. 2.20)."""
        assert self.extractor is not None
        self.mean_features = {}
        for key, folder in (("x", synthetic), ("y", real)):
            count = min(len(folder), self.cfg.mean_feature_samples)
            gen = torch.Generator().manual_seed(self.cfg.seed + 7)
            indices = torch.randperm(len(folder), generator=gen)[:count].tolist()
            sums: dict[str, torch.Tensor] = {}
            for start in range(0, count, 16):
                chunk = indices[start:start + 16]
                batch = self.to_device(folder.batch(chunk, [False] * len(chunk)))
                with self.autocast():
                    feats = self.extractor(batch)
                for name, value in feats.items():
                    total = value.float().sum(0, keepdim=True)
                    sums[name] = sums[name] + total if name in sums else total
            self.mean_features[key] = {name: s / count for name, s in sums.items()}

    # -- feature-term calibration

    @property
    def feature_scales(self) -> dict[str, float]:
        return {} if self.feature_calibration is None else self.feature_calibration["scales"]

    def term_weight(self, name: str) -> float:
        """The effective lambda of a generator term: the preset's times its calibration scale."""
        return getattr(self.weights, name) * self.feature_scales.get(name, 1.0)

    def needs_calibration(self) -> bool:
        return self.feature_share > 0 and self.feature_calibration is None

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Measure every generator term on the calibration batch and scale the feature terms so
        that together they are ``feature_share`` of the objective (see
        :func:`refiner_daemon.refiner.losses.calibrate_feature_scales`).

        Reconstruction-type terms are measured on a probe in which every generated and
        reconstructed image is the other domain's image (``G(x) = F(G(x)) = y``, ``F(y) =
        G(F(y)) = x``): the size of change a refiner could make, so the feature and pixel terms
        are compared on the same image pairs (at the start of a "+S" run, whose generators are the
        identity, they are all zero, so the networks' own outputs cannot calibrate them). The mean-feature term is measured
        with identity generators (its value at the start of training), the adversarial term on
        the networks as they are.
        """
        for net in self.networks().values():
            net.eval()
        x, y = self.to_device(x), self.to_device(y)
        with self.autocast():
            o = self.forward(x, y, epoch=0)
            actual = self.generator_losses(o)
            deviation = self.generator_losses(
                {**o, "rec_x": y, "rec_y": x, "fake_y": y, "fake_x": x})
            start = (self.generator_losses({**o, "fake_y": x, "fake_x": y})
                     if self.weights.mean_feature > 0 else {})
        raw = {name: float(value) for name, value in deviation.items()}
        raw["adversarial"] = float(actual["adversarial"])
        if "mean_feature" in start:
            raw["mean_feature"] = float(start["mean_feature"])
        self.feature_calibration = {
            **L.calibrate_feature_scales(raw, self.weights.to_dict(), self.feature_share),
            "batch": len(x), "extractor": describe(self.extractor)}
        for net in self.networks().values():
            net.train()
        return self.feature_calibration

    # -- the training step

    def translate(self, generator: nn.Module, attention: nn.Module | None, source: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(output, raw generator output, attention map) for one direction (Eq. 2.10)."""
        raw = generator(source)
        if attention is None:
            return raw, raw, None
        att = attention(source)
        return composite(raw, source, att), raw, att

    def forward(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, Any]:
        G, F = self.train_nets["G"], self.train_nets["F"]
        A_X, A_Y = self.A_X, self.A_Y
        if self.attention_trainable(epoch):
            A_X, A_Y = self.train_nets["A_X"], self.train_nets["A_Y"]
        fake_y, raw_y, att_x = self.translate(G, A_X, x)
        rec_x, _, _ = self.translate(F, A_Y, fake_y)
        fake_x, raw_x, att_y = self.translate(F, A_Y, y)
        rec_y, _, _ = self.translate(G, A_X, fake_x)
        out = {"x": x, "y": y, "fake_y": fake_y, "rec_x": rec_x, "fake_x": fake_x, "rec_y": rec_y,
                   "att_x": att_x, "att_y": att_y}
        # What the discriminators see: whole images, or after AGGAN's switch, the thresholded
        # foregrounds of generated and real images (Eq. 2.14-2.16).
        if att_x is not None and att_y is not None and epoch >= self.cfg.switch_epoch:
            tau = self.cfg.tau
            out.update(d_fake_y=threshold_foreground(raw_y, att_x.detach(), tau),
                       d_fake_x=threshold_foreground(raw_x, att_y.detach(), tau),
                       d_real_y=threshold_foreground(y, att_y.detach(), tau),
                       d_real_x=threshold_foreground(x, att_x.detach(), tau))
        else:
            out.update(d_fake_y=fake_y, d_fake_x=fake_x, d_real_y=y, d_real_x=x)
        return out

    def generator_losses(self, o: dict[str, Any]) -> dict[str, torch.Tensor]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        terms["adversarial"] = (L.lsgan_generator_loss(self.D_Y(o["d_fake_y"]))
                                + L.lsgan_generator_loss(self.D_X(o["d_fake_x"])))
        if w.cycle_pixel > 0:
            terms["cycle_pixel"] = L.pixel_l1(o["rec_x"], o["x"]) + L.pixel_l1(o["rec_y"], o["y"])
        if w.identity_pixel > 0:
            terms["identity_pixel"] = (L.pixel_l1(o["fake_y"], o["x"])
                                       + L.pixel_l1(o["fake_x"], o["y"]))
        if w.uses_perceptual():
            terms.update(self._perceptual_terms(o))
        if w.disc_feature_cycle > 0:
            layers = [j - 1 for j in self.cfg.discriminator_layers()]
            total = o["x"].new_zeros(())
            for disc, real, rec in ((self.D_X, o["x"], o["rec_x"]), (self.D_Y, o["y"], o["rec_y"])):
                with torch.no_grad():
                    real_feats = disc.features(real)
                rec_feats = disc.features(rec)
                total = total + L.layered_feature_distance([real_feats[j] for j in layers],
                                                           [rec_feats[j] for j in layers])
            terms["disc_feature_cycle"] = total
        return terms

    def _perceptual_terms(self, o: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.extractor is not None, "perceptual losses need a feature extractor"
        w = self.weights
        V = self.extractor
        with torch.no_grad():
            v_x, v_y = V(o["x"]), V(o["y"])
        v_fake_y = V(o["fake_y"]) if (w.identity_feature > 0 or w.mean_feature > 0) else None
        v_fake_x = V(o["fake_x"]) if (w.identity_feature > 0 or w.mean_feature > 0) else None
        terms: dict[str, torch.Tensor] = {}
        if w.cycle_feature > 0:
            terms["cycle_feature"] = (L.layered_feature_distance(V(o["rec_x"]), v_x)
                                      + L.layered_feature_distance(V(o["rec_y"]), v_y))
        if w.identity_feature > 0:
            assert v_fake_y is not None and v_fake_x is not None
            terms["identity_feature"] = (L.layered_feature_distance(v_fake_y, v_x)
                                         + L.layered_feature_distance(v_fake_x, v_y))
        if w.mean_feature > 0:
            if self.mean_features is None:
                raise RuntimeError("mean_feature loss needs compute_mean_features() first")
            assert v_fake_y is not None and v_fake_x is not None
            terms["mean_feature"] = (L.mean_feature_distance(v_fake_y, self.mean_features["y"])
                                     + L.mean_feature_distance(v_fake_x, self.mean_features["x"]))
        return terms

    def generator_step(self, o: dict[str, Any], epoch: int) -> dict[str, float]:
        """Update G and F (and the attention networks before the switch), D frozen."""
        set_requires_grad([self.D_X, self.D_Y], False)
        train_attention = self.attention_trainable(epoch)
        set_requires_grad([self.A_X, self.A_Y], train_attention)
        self.optimizers["G"].zero_grad(set_to_none=True)
        if "A" in self.optimizers:
            self.optimizers["A"].zero_grad(set_to_none=True)
        with self.autocast():
            terms = self.generator_losses(o)
        weighted = {name: self.term_weight(name) * value for name, value in terms.items()}
        total = sum(weighted.values())
        assert isinstance(total, torch.Tensor)
        total.backward()
        self.optimizers["G"].step()
        if train_attention:
            self.optimizers["A"].step()
        set_requires_grad([self.D_X, self.D_Y], True)
        result = {name: float(value.detach()) for name, value in terms.items()}
        result["G_total"] = float(total.detach())
        # Every weighted term and its share of the generator objective (issue 13).
        denominator = max(abs(result["G_total"]), 1e-12)
        for name, value in weighted.items():
            result[f"weighted/{name}"] = float(value.detach())
            result[f"share/{name}"] = float(value.detach()) / denominator
        return result

    @staticmethod
    def _discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor
                            ) -> torch.Tensor:
        # One pass over real and fake together: InstanceNorm is per image, so this equals two
        # passes, and one larger batch runs faster than two batch-1 calls on the CPU.
        prediction = disc(torch.cat([real, fake]))
        return L.lsgan_discriminator_loss(prediction[:len(real)], prediction[len(real):])

    def discriminator_step(self, o: dict[str, Any]) -> dict[str, float]:
        """Update D_X and D_Y on real images and pooled, detached fakes."""
        self.optimizers["D"].zero_grad(set_to_none=True)
        fake_y = self.pool_fake_y.query(o["d_fake_y"].detach())
        fake_x = self.pool_fake_x.query(o["d_fake_x"].detach())
        with self.autocast():
            loss_d_y = self._discriminator_loss(self.train_nets["D_Y"], o["d_real_y"].detach(), fake_y)
            loss_d_x = self._discriminator_loss(self.train_nets["D_X"], o["d_real_x"].detach(), fake_x)
        (loss_d_x + loss_d_y).backward()
        self.optimizers["D"].step()
        return {"D_X": float(loss_d_x.detach()), "D_Y": float(loss_d_y.detach())}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
        """One iteration of Algorithm 8/9; returns every loss term as a float."""
        epoch = step // self.steps_per_epoch
        if self.needs_calibration():  # without a calibration batch: the first training batch
            self.calibrate(x, y)
        for net in self.networks().values():
            net.train()
        x, y = self.to_device(x), self.to_device(y)
        with self.autocast():
            outputs = self.forward(x, y, epoch)
        losses = self.generator_step(outputs, epoch)
        losses.update(self.discriminator_step(outputs))
        if outputs["att_x"] is not None:
            losses["attention_mean"] = float(outputs["att_x"].detach().float().mean())
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.last_outputs = outputs
        return losses

    @torch.no_grad()
    def refine_uint8(self, crops: Any, batch_size: int = 16) -> Any:
        """G (with its attention net) applied to uint8 crops (N, H, W, C), as the exported
        refiner would; float32, eval mode (the training step sets train mode again)."""
        import numpy as np

        from refiner_daemon.refiner.data import tensor_to_uint8, uint8_to_tensor
        self.G.eval()
        if self.A_X is not None:
            self.A_X.eval()
        out = []
        for start in range(0, len(crops), batch_size):
            x = uint8_to_tensor(np.ascontiguousarray(crops[start:start + batch_size]))
            refined, _, _ = self.translate(self.G, self.A_X, self.to_device(x))
            out.append(tensor_to_uint8(refined.float().cpu()))
        self.G.train()
        if self.A_X is not None:
            self.A_X.train()
        return np.concatenate(out) if out else np.zeros_like(crops)

    # -- checkpoint state (everything loadable with weights_only=True)

    def state_dict(self, step: int) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state(),
                               "python": list(_flatten_python_rng(random.getstate()))}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "step": step,
            "models": {name: net.state_dict() for name, net in self.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "pools": {"fake_x": self.pool_fake_x.state_dict(),
                      "fake_y": self.pool_fake_y.state_dict()},
            "mean_features": self.mean_features,
            "feature_calibration": self.feature_calibration,
            "perceptual": describe(self.extractor),
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a refiner checkpoint (format {state.get('format')!r})")
        for name, net in self.networks().items():
            net.load_state_dict(state["models"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.pool_fake_x.load_state_dict(state["pools"]["fake_x"], device=self.device)
        self.pool_fake_y.load_state_dict(state["pools"]["fake_y"], device=self.device)
        if state["mean_features"] is not None:
            self.mean_features = {k: {n: t.to(self.device) for n, t in v.items()}
                                  for k, v in state["mean_features"].items()}
        # A checkpoint from before calibration existed ran with the raw lambdas: keep them.
        self.feature_calibration = state.get(
            "feature_calibration",
            None if self.feature_share == 0 else {"share": 0.0, "scales": {}, "legacy": True})
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_unflatten_python_rng(state["rng"]["python"]))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"])


def _flatten_python_rng(state: tuple[Any, ...]) -> Iterator[int]:
    version, internal, _gauss = state
    yield int(version)
    yield from (int(v) for v in internal)


def _unflatten_python_rng(values: list[int]) -> tuple[Any, ...]:
    return (values[0], tuple(values[1:]), None)


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """torch.save to a temporary file in the same folder, then os.replace over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------- export

def state_dict_sha256(config: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor] | None]
                      ) -> str:
    """A hash of a refiner's config and weights that is stable across save/load and machines."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
    for group in sorted(tensors):
        state = tensors[group]
        if state is None:
            continue
        for key in sorted(state):
            value = state[key].detach().cpu().contiguous()
            digest.update(f"{group}/{key}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def export_refiner(path: str | Path, spec: ModelSpec, generator: nn.Module,
                   attention: nn.Module | None = None, *, name: str | None = None,
                   training: dict[str, Any] | None = None) -> Path:
    """Write the generator (G: synthetic -> real), its attention net and config to ``path``.

    The file holds only tensors and plain values (``torch.load(..., weights_only=True)``), plus
    a sha256 of config and weights that names exactly which refiner produced a dataset.
    """
    if (attention is None) != (spec.architecture != "aggan"):
        raise ValueError(f"architecture {spec.architecture!r} "
                         f"{'needs' if spec.architecture == 'aggan' else 'takes no'} attention net")
    gen_state = {k: v.detach().float().cpu().contiguous() for k, v in generator.state_dict().items()}
    att_state = (None if attention is None else
                 {k: v.detach().float().cpu().contiguous() for k, v in attention.state_dict().items()})
    config = {"name": name or Path(path).stem, "model": spec.to_dict(), "training": training or {}}
    sha = state_dict_sha256(config, {"generator": gen_state, "attention": att_state})
    payload = {"format": REFINER_FORMAT, "config": config, "generator": gen_state,
               "attention": att_state, "sha256": sha}
    return atomic_torch_save(payload, Path(path))


# --------------------------------------------------------------------------- the loop

def _check_resume_compatible(saved: dict[str, Any], cfg: RefinerConfig) -> None:
    current = cfg.to_dict()
    # A field added after the checkpoint was written counts as its default.
    defaults = {f.name: f.default for f in fields(RefinerConfig)}
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES
                     and saved.get(k, defaults.get(k)) != current[k])
    if changed:
        raise ValueError(f"cannot resume: config field(s) {changed} differ from the checkpoint "
                         f"(checkpoint: {[saved.get(k) for k in changed]}); use the original "
                         "values or start a new run_dir")


def _log_images(writer: Any, outputs: dict[str, Any], step: int) -> None:
    from torchvision.utils import make_grid

    def first(key: str) -> torch.Tensor:
        return outputs[key][:1].detach().float().cpu()

    rows = [first("x"), first("fake_y"), first("rec_x"), first("y"), first("fake_x"),
            first("rec_y")]
    writer.add_image("synthetic_refined_cycle__real_fake_cycle",
                     make_grid(torch.cat(rows), nrow=3, normalize=True, value_range=(-1, 1)), step)
    if outputs["att_x"] is not None:
        maps = torch.cat([first("att_x"), first("att_y")]).repeat(1, 3, 1, 1)
        writer.add_image("attention_x_y", make_grid(maps, nrow=2), step)


def _calibration_batch(synthetic: CropFolder, real: CropFolder, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed feature-calibration batch: up to ``CALIBRATION_CROPS`` seeded crops per domain."""
    gen = torch.Generator().manual_seed(seed + 13)
    count = min(CALIBRATION_CROPS, len(synthetic), len(real))
    pick = [torch.randperm(len(f), generator=gen)[:count].tolist() for f in (synthetic, real)]
    return (synthetic.batch(pick[0], [False] * count), real.batch(pick[1], [False] * count))


def _rewrite_log_upto(path: Path, step: int) -> list[dict[str, Any]]:
    """The entries of a JSON-lines log with ``step <= step`` (what a resumed run keeps)."""
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("step", 0) <= step]


def validation_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``<run_dir>/validation.json`` (None without validation): ``{"metric": "fd",
    "feature_space", "raw": {"fd", "kid", "kid_std"} (S_val unrefined), "best": {"step", "fd",
    "kid", "head_ssim", "model"} or None (no non-harmful evaluation yet), "history": [{"step",
    "fd", "kid", "kid_std", "head_ssim", "head_ssim_min", "head_threshold", "harmful",
    "contact_sheet"}, ...]}``."""
    path = Path(run_dir) / "validation.json"
    return json.loads(path.read_text()) if path.exists() else None


def train_refiner(cfg: RefinerConfig, *, on_progress: Callable[[dict[str, Any]], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Path:
    """Train (or resume) a refiner; returns the path of the exported ``<run_dir>/refiner.pt``
    (the generator at the last step).

    Writes ``config.json`` (with the feature calibration), ``checkpoints/latest.pt`` every
    ``checkpoint_every`` steps and at the end, ``losses.jsonl`` (every ``log_every`` steps: each
    raw term, each weighted term and its share of the generator objective), TensorBoard logs under
    ``tensorboard/`` and the exported generator ``refiner.pt`` (also when stopped early by
    ``should_stop`` or ``max_steps``, from the state at that point).

    With ``val_synthetic_dir``/``val_real_dir``: every ``val_every`` steps and at the last step
    G(S_val) is scored against R_val (:mod:`refiner_daemon.refiner.validation`), logged to
    TensorBoard (``val/*``), appended to ``validation.json`` with a contact sheet
    ``validation/step_NNNNNN.png``, and the lowest-FD non-harmful step so far is exported as
    ``model_best.pt`` (same format as ``refiner.pt``; its training record names the step). Which
    step that was: ``validation.json`` ``"best"``, :func:`validation_summary`, the line printed at
    the end, and ``refiner.pt``'s training record (``"validation_best"``).
    """
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a training run; pass resume=True "
                              "(--resume) to continue it or choose a new run_dir")
    with session(resolve_device(cfg.device)) as (dist, device):
        return _train(cfg, dist, device, on_progress, should_stop)


def _train(cfg: RefinerConfig, dist: DistributedContext, device: torch.device,
           on_progress: Callable[[dict[str, Any]], None] | None,
           should_stop: Callable[[], bool] | None) -> Path:
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    main = dist.is_main  # the one process that writes files
    # Rank 0 may have just built the inputs (the CLI's --skip-bad link folders): read after it.
    dist.barrier()
    synthetic = CropFolder(cfg.synthetic_dir, tuple(cfg.crop_size), channels=cfg.channels)
    real = CropFolder(cfg.real_dir, tuple(cfg.crop_size), channels=cfg.channels)
    batches = UnpairedBatches(synthetic, real, batch_size=cfg.batch_size * dist.world_size,
                              seed=cfg.seed, flip=cfg.flip, rank=dist.rank,
                              world_size=dist.world_size)
    trainer = RefinerTrainer(cfg, steps_per_epoch=batches.steps_per_epoch, device=device, dist=dist)
    total = trainer.total_steps
    start = 0
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=trainer.device, what="training checkpoint")
        _check_resume_compatible(state["config"], cfg)
        saved_world = int(state.get("world_size", 1))
        if saved_world != dist.world_size:
            raise ValueError(f"cannot resume: {ckpt_path} was trained by {saved_world} process(es) "
                             f"(global batch {cfg.batch_size * saved_world}), now "
                             f"{dist.world_size}; relaunch with {saved_world} or start a new run_dir")
        if state["perceptual"] != describe(trainer.extractor):
            # e.g. "auto" now finds VGG16 weights where the run started with MobileNetV2.
            raise ValueError(f"cannot resume: the run used perceptual extractor "
                             f"{state['perceptual']}, now {describe(trainer.extractor)}; pass "
                             "--perceptual NAME --perceptual-weights PATH of the original")
        start = trainer.load_state_dict(state)
    else:
        random.seed(cfg.seed)
        if trainer.weights.mean_feature > 0:
            trainer.compute_mean_features(synthetic, real)
        if trainer.needs_calibration():
            trainer.calibrate(*_calibration_batch(synthetic, real, cfg.seed))
    record = {**cfg.to_dict(), "perceptual_extractor": describe(trainer.extractor),
              "preset_details": cfg.preset_obj().to_dict(), "effective_weights":
              {**trainer.weights.to_dict(),
               **{name: trainer.term_weight(name) for name in trainer.feature_scales}},
              "feature_calibration": trainer.feature_calibration,
              "steps_per_epoch": batches.steps_per_epoch,
              "total_steps": total, "device_used": str(trainer.device), "amp_used": trainer.amp}
    if dist.enabled:
        record.update(world_size=dist.world_size, global_batch_size=cfg.batch_size * dist.world_size)
    loss_log = run_dir / "losses.jsonl"
    if main:
        atomic_write_json(run_dir / "config.json", record)
        kept = _rewrite_log_upto(loss_log, start)
        loss_log.write_text("".join(json.dumps(e) + "\n" for e in kept))

    validator = None
    validation: dict[str, Any] | None = None
    if main and cfg.val_synthetic_dir is not None and cfg.val_real_dir is not None:
        from refiner_daemon.refiner.validation import FEATURE_SPACE, Validator
        validator = Validator(cfg.val_synthetic_dir, cfg.val_real_dir,
                              crop_size=tuple(cfg.crop_size), max_crops=cfg.val_max_crops,
                              seed=cfg.seed, device=trainer.device)
        validation = validation_summary(run_dir) if cfg.resume else None
        if validation is None:
            validation = {"metric": "fd", "feature_space": FEATURE_SPACE,
                          "raw": validator.raw_scores(), "best": None, "history": []}
        validation["history"] = [h for h in validation["history"] if h["step"] <= start]
        if validation["best"] is not None and validation["best"]["step"] > start:
            ok = [h for h in validation["history"] if not h["harmful"]]
            best = min(ok, key=lambda h: h["fd"]) if ok else None
            validation["best"] = None if best is None else {
                **{k: best[k] for k in ("step", "fd", "kid", "head_ssim")},
                "model": validation["best"]["model"], "stale": True}

    writer = None
    if cfg.tensorboard and main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start)

    def save(step: int) -> None:
        if main:
            state = trainer.state_dict(step)
            if dist.enabled:  # a resume must use the same number of processes (global batch)
                state["world_size"] = dist.world_size
            atomic_torch_save(state, ckpt_path)

    def validate(step: int) -> None:
        assert validator is not None and validation is not None
        if validation["history"] and validation["history"][-1]["step"] == step:
            return
        scores, _, _ = validator.evaluate(
            trainer.refine_uint8, run_dir / "validation" / f"step_{step:06d}.png")
        validation["history"].append({"step": step, **scores})
        best = validation["best"]
        if not scores["harmful"] and (best is None or scores["fd"] < best["fd"]):
            model = export_refiner(
                run_dir / "model_best.pt", trainer.spec, trainer.G, trainer.A_X,
                name=f"{cfg.preset}@{run_dir.name}#best",
                training={**record, "step": step, "selected_by": "lowest validation FD",
                          "validation": scores})
            validation["best"] = {"step": step, "fd": scores["fd"], "kid": scores["kid"],
                                  "head_ssim": scores["head_ssim"], "model": str(model)}
        atomic_write_json(run_dir / "validation.json", validation)
        if writer is not None:
            for key in ("fd", "kid", "head_ssim"):
                writer.add_scalar(f"val/{key}", scores[key], step)
            writer.add_scalar("val/fd_raw", validation["raw"]["fd"], step)
            writer.add_scalar("val/harmful", float(scores["harmful"]), step)

    stop_at = total if cfg.max_steps is None else min(total, cfg.max_steps)
    started = time.monotonic()
    step = start
    try:
        from tqdm import tqdm
        with tqdm(total=total, initial=start, disable=not (cfg.progress and main), unit="step",
                  desc=f"refiner {cfg.preset}") as bar:
            while step < stop_at:
                x, y = batches.batch(step)
                losses = trainer.train_step(x, y, step)
                if dist.enabled:
                    losses = _mean_over_processes(losses, dist)
                step += 1
                bar.update(1)
                if not all(math.isfinite(v) for v in losses.values()):
                    # No checkpoint now: the weights may already hold NaNs; the last one is good.
                    raise FloatingPointError(f"non-finite loss at step {step}: {losses}; lower lr "
                                             "or disable amp, then --resume from the last "
                                             "checkpoint")
                if main and (step % cfg.log_every == 0 or step == 1):
                    with loss_log.open("a") as handle:
                        handle.write(json.dumps({"step": step, "losses": losses}) + "\n")
                if writer is not None and (step % cfg.log_every == 0 or step == 1):
                    for name, value in losses.items():
                        # raw terms under loss/, weighted/<term> and share/<term> as they are
                        writer.add_scalar(name if "/" in name else f"loss/{name}", value, step)
                    writer.add_scalar("lr", trainer.schedulers["G"].get_last_lr()[0], step)
                if writer is not None and (step % cfg.image_every == 0 or step == 1):
                    _log_images(writer, trainer.last_outputs, step)
                if on_progress is not None:
                    rate = (step - start) / max(time.monotonic() - started, 1e-9)
                    on_progress({"step": step, "total_steps": total,
                                 "epoch": (step - 1) // batches.steps_per_epoch,
                                 "losses": losses, "eta_s": (total - step) / rate})
                if validator is not None and step % cfg.val_every == 0:
                    validate(step)
                if step % cfg.checkpoint_every == 0:
                    save(step)
                if dist.any(should_stop is not None and should_stop()):
                    break
        if validator is not None and step > 0:
            validate(step)
        save(step)
    finally:
        if writer is not None:
            writer.close()
    refiner_path = run_dir / "refiner.pt"
    if not main:
        dist.barrier()  # returns once rank 0 has exported
        return refiner_path
    training = {**record, "step": step, "finished": step >= total}
    if validation is not None:
        training["validation_best"] = validation["best"]
        best = validation["best"]
        print(f"refiner {cfg.preset}: " + (
            "no non-harmful validation step; no model_best.pt" if best is None else
            f"best validation FD {best['fd']:.3f} at step {best['step']} "
            f"(unrefined S_val: {validation['raw']['fd']:.3f}) -> {best['model']}"))
    path = export_refiner(refiner_path, trainer.spec, trainer.G, trainer.A_X,
                          name=f"{cfg.preset}@{run_dir.name}", training=training)
    dist.barrier()
    return path


def _mean_over_processes(losses: dict[str, float], dist: DistributedContext) -> dict[str, float]:
    """The losses of the global batch: each term averaged over the processes, and each term's
    share of the generator objective recomputed from the averages (a mean of ratios is not
    the ratio of the means)."""
    mean = dist.mean_floats({k: v for k, v in losses.items() if not k.startswith("share/")})
    denominator = max(abs(mean["G_total"]), 1e-12)
    for key in losses:
        if key.startswith("share/"):
            mean[key] = mean["weighted/" + key[len("share/"):]] / denominator
    return {key: mean[key] for key in losses}  # the single-process key order
