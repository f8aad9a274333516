"""Networks of the GAN refiner: the ResNet generator (thesis Table 2.2, optional input-output
skip connection of §2.7), the 70x70 PatchGAN discriminator (Table 2.3) and the attention network
of AGGAN (§2.5, Mejjati et al.).

Every network takes and returns images scaled to [-1, 1], NCHW. Attention maps are in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_norm_relu(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=True),
        nn.InstanceNorm2d(out_ch, affine=False),
        nn.ReLU(inplace=True),
    ]


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with InstanceNorm; output = input + block(input)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Johnson et al.'s encoder / ResNet transformer / decoder generator used by CycleGAN.

    ``width`` is the number of filters of the first convolution (64 in the thesis, 32 for the
    AGGAN generator). With ``skip=True`` the network predicts a residual that is added to its
    input (§2.7, "with S"): ``out = clamp(x + tanh(r), -1, 1)``. The last convolution of a skip
    generator starts at zero, so an untrained skip generator is exactly the identity and training
    starts from "change nothing" rather than from noise.
    """

    def __init__(self, *, width: int = 64, n_blocks: int = 9, skip: bool = False,
                 channels: int = 3) -> None:
        super().__init__()
        if width < 1 or n_blocks < 0:
            raise ValueError(f"width must be >= 1 and n_blocks >= 0, got {width=} {n_blocks=}")
        self.skip = skip
        layers: list[nn.Module] = [nn.ReflectionPad2d(3)]
        layers += _conv_norm_relu(channels, width, 7, 1, 0)
        layers += _conv_norm_relu(width, width * 2, 3, 2, 1)
        layers += _conv_norm_relu(width * 2, width * 4, 3, 2, 1)
        layers += [ResidualBlock(width * 4) for _ in range(n_blocks)]
        for in_ch, out_ch in ((width * 4, width * 2), (width * 2, width)):
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
        self.last = nn.Conv2d(width, channels, 7)
        layers += [nn.ReflectionPad2d(3), self.last]
        self.body = nn.Sequential(*layers)
        if skip:
            nn.init.zeros_(self.last.weight)
            nn.init.zeros_(self.last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(self.body(x))
        if self.skip:
            return (x + out).clamp(-1.0, 1.0)
        return out


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN (Table 2.3): four 4x4 convolutions (64, 128, 256, 512 filters at width 64)
    with LeakyReLU(0.2), InstanceNorm after all but the first, then a 4x4 convolution to one
    channel. As in CycleGAN the 512-filter layer and the output layer use stride 1, which is what
    gives each output a 70x70 receptive field.

    :meth:`features` returns the activations after each of the four blocks (layers 1-4), used by
    the discriminator-feature cyclic loss (Eq. 2.21-2.22).

    ``n_strided`` (3) is how many of the first three blocks halve the resolution. For small
    images (28x28 digits) 2 keeps a grid of patch outputs (4x4, each seeing 46x46 px) where 3
    would leave a single output over a mostly padded 70x70 window.
    """

    N_FEATURE_LAYERS = 4

    def __init__(self, *, width: int = 64, channels: int = 3, n_strided: int = 3) -> None:
        super().__init__()
        if n_strided not in (1, 2, 3):
            raise ValueError(f"n_strided must be 1, 2 or 3, got {n_strided}")
        act = lambda: nn.LeakyReLU(0.2, inplace=True)
        stride = [2 if i < n_strided else 1 for i in range(3)]
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels, width, 4, stride[0], 1), act()),
            nn.Sequential(nn.Conv2d(width, width * 2, 4, stride[1], 1), nn.InstanceNorm2d(width * 2),
                          act()),
            nn.Sequential(nn.Conv2d(width * 2, width * 4, 4, stride[2], 1),
                          nn.InstanceNorm2d(width * 4), act()),
            nn.Sequential(nn.Conv2d(width * 4, width * 8, 4, 1, 1), nn.InstanceNorm2d(width * 8),
                          act()),
        ])
        self.head = nn.Conv2d(width * 8, 1, 4, 1, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class AttentionNet(nn.Module):
    """AGGAN attention network: a small encoder-decoder ending in a sigmoid, one map per image.

    Layout after Mejjati et al.: 7x7 conv, a stride-2 conv, a residual block, nearest-neighbour
    upsampling (avoids the checkerboard artefacts of transposed convolutions that §5.5.1 saw),
    a 3x3 conv and a 7x7 conv to one channel.
    """

    def __init__(self, *, width: int = 32, channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(3),
            *_conv_norm_relu(channels, width, 7, 1, 0),
            *_conv_norm_relu(width, width * 2, 3, 2, 1),
            ResidualBlock(width * 2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_norm_relu(width * 2, width, 3, 1, 1),
            nn.ReflectionPad2d(3),
            nn.Conv2d(width, 1, 7),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


def composite(generated: torch.Tensor, source: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """AGGAN's output (Eq. 2.10): ``a * G(x) + (1 - a) * x``."""
    return attention * generated + (1.0 - attention) * source


def threshold_foreground(image: torch.Tensor, attention: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 2.14-2.15: keep ``image`` where the attention exceeds ``tau``, zero elsewhere."""
    return image * (attention > tau).to(image.dtype)
