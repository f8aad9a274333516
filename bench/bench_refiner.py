"""Refiner benchmark: training step time and inference throughput against plain baselines.

- Training: one CycleGAN step (preset C_CP: G, F, D_X, D_Y, LSGAN + cyclic L1, Adam) of
  :class:`refiner_daemon.refiner.training.RefinerTrainer` (with its default bfloat16 autocast, used on
  CUDA and on CPUs with native bf16, and with ``amp=False``) against a plain fp32 eager
  implementation of the same step written here, same architecture, batch and crop size.
- Inference: crops/s of :class:`refiner_daemon.refiner.inference.Refiner` (batched, inference mode, fp32
  and, where the CPU has native bf16, bfloat16 with its measured difference from fp32) against a
  batch-1 fp32 eager loop under ``torch.no_grad``.

CPU settings (chosen to keep the run to a few minutes on 2 cores): generator width 32, 9 ResNet
blocks, discriminator width 32, 128x128 crops; batch 1 for the training step, 16 crops for
inference.
Timings are the best (minimum) of several interleaved repetitions: on a loaded machine the
minimum is the repetition least disturbed by other processes, and interleaving exposes every
variant to the same load. On CUDA the same code runs
with AMP and channels_last and reports peak memory.

Run: ``python -m bench refiner``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import print_table, write_result
from refiner_daemon.refiner import losses as L
from refiner_daemon.refiner.inference import Refiner, cpu_has_native_bf16
from refiner_daemon.refiner.networks import PatchDiscriminator, ResnetGenerator
from refiner_daemon.refiner.training import ModelSpec, RefinerConfig, RefinerTrainer, export_refiner

WIDTH, N_BLOCKS, DISC_WIDTH, CROP = 32, 9, 32, 128
TRAIN_CROP, TRAIN_BATCH, TRAIN_STEPS, TRAIN_REPEATS = 128, 1, 1, 3
INFER_CROPS, INFER_REPEATS = 16, 3


def _best_of(functions: dict[str, Callable[[], Any]], repeats: int
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and best process CPU time of each function, repetitions interleaved so
    load from other processes hits all alike. CPU time is less disturbed by other processes
    taking the cores; it is reported beside the wall time."""
    for fn in functions.values():
        fn()  # warm-up: allocator, oneDNN kernel selection
    wall = {name: float("inf") for name in functions}
    cpu = dict(wall)
    for _ in range(repeats):
        for name, fn in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return wall, cpu


class PlainCycleGANStep:
    """The baseline: CycleGAN's step written plainly in fp32, no pools, no AMP, NCHW."""

    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.G = ResnetGenerator(width=WIDTH, n_blocks=N_BLOCKS).to(device)
        self.F = ResnetGenerator(width=WIDTH, n_blocks=N_BLOCKS).to(device)
        self.D_X = PatchDiscriminator(width=DISC_WIDTH).to(device)
        self.D_Y = PatchDiscriminator(width=DISC_WIDTH).to(device)
        self.opt_g = torch.optim.Adam([*self.G.parameters(), *self.F.parameters()], 2e-4,
                                      betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam([*self.D_X.parameters(), *self.D_Y.parameters()], 2e-4,
                                      betas=(0.5, 0.999))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        fake_y, fake_x = self.G(x), self.F(y)
        rec_x, rec_y = self.F(fake_y), self.G(fake_x)
        for p in [*self.D_X.parameters(), *self.D_Y.parameters()]:
            p.requires_grad_(False)
        self.opt_g.zero_grad()
        loss_g = (L.lsgan_generator_loss(self.D_Y(fake_y)) + L.lsgan_generator_loss(self.D_X(fake_x))
                  + 10 * (L.pixel_l1(rec_x, x) + L.pixel_l1(rec_y, y)))
        loss_g.backward()
        self.opt_g.step()
        for p in [*self.D_X.parameters(), *self.D_Y.parameters()]:
            p.requires_grad_(True)
        self.opt_d.zero_grad()
        loss_d = (L.lsgan_discriminator_loss(self.D_Y(y), self.D_Y(fake_y.detach()))
                  + L.lsgan_discriminator_loss(self.D_X(x), self.D_X(fake_x.detach())))
        loss_d.backward()
        self.opt_d.step()


def bench_training(device: torch.device) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(TRAIN_BATCH, 3, TRAIN_CROP, TRAIN_CROP, generator=gen) * 2 - 1).to(device)
    y = (torch.rand(TRAIN_BATCH, 3, TRAIN_CROP, TRAIN_CROP, generator=gen) * 2 - 1).to(device)
    baseline = PlainCycleGANStep(device)
    trainers = {}
    for amp in (True, False):
        cfg = RefinerConfig(run_dir="unused", synthetic_dir="unused", real_dir="unused",
                            preset="C_CP", epochs=100, batch_size=TRAIN_BATCH,
                            crop_size=(TRAIN_CROP, TRAIN_CROP), width=WIDTH, disc_width=DISC_WIDTH,
                            n_blocks=N_BLOCKS, device=str(device), amp=amp)
        trainers[amp] = RefinerTrainer(cfg, steps_per_epoch=100)
    counter = iter(range(10**9))

    def run_trainer(amp: bool) -> None:
        for _ in range(TRAIN_STEPS):
            trainers[amp].train_step(x, y, next(counter))

    def run_baseline() -> None:
        for _ in range(TRAIN_STEPS):
            baseline.step(x, y)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    names = {"baseline": "plain fp32 eager step", True: "RefinerTrainer (amp=True)",
             False: "RefinerTrainer (amp=False)"}
    wall, cpu = _best_of({names["baseline"]: run_baseline, names[True]: lambda: run_trainer(True),
                          names[False]: lambda: run_trainer(False)}, TRAIN_REPEATS)
    per_step = {name: t / TRAIN_STEPS for name, t in wall.items()}
    cpu_per_step = {name: t / TRAIN_STEPS for name, t in cpu.items()}
    base, base_cpu = per_step[names["baseline"]], cpu_per_step[names["baseline"]]
    out: dict[str, Any] = {
        "baseline": "plain fp32 eager CycleGAN step (same networks, batch, crop)",
        "s_per_step": per_step,
        "speedup": {name: base / t for name, t in per_step.items()},
        "cpu_s_per_step": cpu_per_step,
        "cpu_time_speedup": {name: base_cpu / t for name, t in cpu_per_step.items()},
        "amp_used": trainers[True].amp, "amp_kind": "bfloat16 autocast" if trainers[True].amp
        else "none (no native bf16 here)",
        "channels_last": trainers[True].memory_format == torch.channels_last,
    }
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _bench_crops(n: int) -> np.ndarray:
    """Smooth, photo-like test crops (blurred colour fields with edges), reproducible."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 8, 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(CROP, CROP), mode="bicubic")
    edges = torch.from_numpy(rng.uniform(-30, 30, (n, 3, CROP, CROP)).astype(np.float32))
    return smooth.add(edges).clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def bench_inference(device: torch.device) -> dict[str, Any]:
    crops = _bench_crops(INFER_CROPS)
    torch.manual_seed(0)
    generator = ResnetGenerator(width=WIDTH, n_blocks=N_BLOCKS)
    spec = ModelSpec(width=WIDTH, n_blocks=N_BLOCKS, crop_size=(CROP, CROP))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_refiner(Path(tmp) / "bench.pt", spec, generator, name="bench")
        fp32 = Refiner.load(path, device=str(device), precision="fp32")
        auto = Refiner.load(path, device=str(device), precision="auto")
        auto.refine(crops[:4])  # lets it decide its precision on a real batch

    baseline_net = ResnetGenerator(width=WIDTH, n_blocks=N_BLOCKS).to(device).eval()
    baseline_net.load_state_dict(generator.state_dict())

    def run_baseline() -> None:
        with torch.no_grad():
            for crop in crops:
                image = torch.from_numpy(crop).permute(2, 0, 1)[None].float().to(device)
                out = baseline_net(image / 127.5 - 1)
                ((out + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()

    functions: dict[str, Callable[[], Any]] = {
        "batch-1 fp32 eager loop": run_baseline,
        "Refiner fp32 batched": lambda: fp32.refine(crops),
    }
    reduced = "fp16" if device.type == "cuda" else ("bf16" if cpu_has_native_bf16() else None)
    forced = None
    if reduced is not None:
        forced = Refiner(spec, generator.state_dict(), None, fp32.config, fp32.sha256,
                         device=str(device), precision=reduced)
        functions[f"Refiner {reduced} batched"] = lambda: forced.refine(crops)
    wall, cpu = _best_of(functions, INFER_REPEATS)
    rates = {name: INFER_CROPS / t for name, t in wall.items()}
    cpu_rates = {name: INFER_CROPS / t for name, t in cpu.items()}
    base, base_cpu = rates["batch-1 fp32 eager loop"], cpu_rates["batch-1 fp32 eager loop"]
    quality = None
    if forced is not None:
        diff = np.abs(forced.refine(crops).images.astype(int) - fp32.refine(crops).images)
        quality = {"mean_abs_diff_u8": float(diff.mean()),
                   "p99_abs_diff_u8": float(np.percentile(diff, 99)),
                   "max_abs_diff_u8": int(diff.max())}
    return {"baseline": "batch-1 fp32 eager loop under torch.no_grad",
            "crops_per_s": rates, "speedup": {k: v / base for k, v in rates.items()},
            "crops_per_cpu_s": cpu_rates,
            "cpu_time_speedup": {k: v / base_cpu for k, v in cpu_rates.items()},
            "reduced_precision_vs_fp32": quality,
            "auto_precision_decision": auto.precision_check,
            "note": "random-weight generator: the bf16 difference of a trained one will differ"}


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: other processes on the machine skew wall times."""
    try:
        import os
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())  # the default: all cores
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup = {"device": str(device), "load_average_at_start": _load_average(), "threads": torch.get_num_threads(), "width": WIDTH,
             "n_blocks": N_BLOCKS, "disc_width": DISC_WIDTH, "crop": CROP,
             "train_crop": TRAIN_CROP, "train_batch": TRAIN_BATCH, "inference_crops": INFER_CROPS}
    training = bench_training(device)
    print_table(f"refiner training step (C_CP, width 32, {TRAIN_CROP}x{TRAIN_CROP}, batch 1)",
                ["implementation", "s/step", "speedup", "cpu s/step", "cpu-time speedup"],
                [[name, t, training["speedup"][name], training["cpu_s_per_step"][name],
                  training["cpu_time_speedup"][name]]
                 for name, t in training["s_per_step"].items()])
    inference = bench_inference(device)
    print_table(f"refiner inference ({INFER_CROPS} crops 128x128, width 32)",
                ["implementation", "crops/s", "speedup", "crops/cpu-s", "cpu-time speedup"],
                [[name, rate, inference["speedup"][name], inference["crops_per_cpu_s"][name],
                  inference["cpu_time_speedup"][name]]
                 for name, rate in inference["crops_per_s"].items()])
    if inference["reduced_precision_vs_fp32"]:
        print(f"reduced precision vs fp32 (uint8 levels): {inference['reduced_precision_vs_fp32']}")
    print(f"Refiner precision='auto' decided: {inference['auto_precision_decision']}")
    setup["load_average_at_end"] = _load_average()
    print(f"load average (1/5/15 min) at start {setup['load_average_at_start']}, "
          f"at end {setup['load_average_at_end']}")
    write_result("refiner", {"setup": setup, "training": training, "inference": inference})


if __name__ == "__main__":
    main()
