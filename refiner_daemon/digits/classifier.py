"""The small CNN that judges each training set on real digits, and its training loop.

Two 3x3 convolution blocks (32 and 64 filters, each followed by 2x2 max pooling), a 128-unit
hidden layer with dropout, ten outputs: the classic small MNIST network. Every arm trains for
the same number of steps with the same batch size, whatever its set's size, so small sets are
not under-trained relative to large ones; batches are a pure function of (seed, step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


class DigitNet(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, hidden), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(hidden, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer: the feature space of the gap metrics."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.body(x)))


@dataclass(frozen=True)
class ClassifierConfig:
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_shift: int = 2   # random translation in px (all arms alike)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def _shift(batch: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    if max_shift <= 0:
        return batch
    padded = nn.functional.pad(batch, (max_shift,) * 4)
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(batch), 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + 28, dx:dx + 28]
    return out


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int,
                     cfg: ClassifierConfig = ClassifierConfig(),
                     sample_weights: np.ndarray | None = None) -> DigitNet:
    """Train a :class:`DigitNet` on uint8 (N, 28, 28) images for ``cfg.steps`` steps; batches
    are drawn uniformly, or in proportion to ``sample_weights`` when given."""
    if len(images) == 0:
        raise ValueError("empty training set")
    torch.manual_seed(seed)
    net = DigitNet()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all, y_all = to_tensor(images), torch.from_numpy(np.asarray(labels, np.int64))
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    net.train()
    batch = min(cfg.batch_size, len(images))
    weights = (None if sample_weights is None
               else torch.as_tensor(np.asarray(sample_weights, np.float64), dtype=torch.float64))
    for _ in range(cfg.steps):
        idx = (torch.randint(0, len(images), (batch,), generator=gen) if weights is None
               else torch.multinomial(weights, batch, replacement=True, generator=gen))
        x = _shift(x_all[idx], gen, cfg.max_shift)
        loss = nn.functional.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: DigitNet, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    net.eval()
    out = [net(to_tensor(images[i:i + batch_size])).argmax(1).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(net: DigitNet, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(net, images) == np.asarray(labels)).mean())


@torch.no_grad()
def features(net: DigitNet, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    net.eval()
    return np.concatenate([net.features(to_tensor(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)]).astype(np.float64)
