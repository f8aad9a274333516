"""History of generated images shown to a discriminator (Shrivastava et al., thesis §2.7).

Until the pool is full, every generated image is stored and returned unchanged. Afterwards each
image is, with probability 1/2, swapped for a randomly chosen stored one (which it replaces),
otherwise returned as is. The pool draws from its own seeded generator, so its state (images and
RNG) can be checkpointed as plain tensors and a resumed run makes the same choices.
"""

from __future__ import annotations

import torch


class ImagePool:
    def __init__(self, size: int = 50, *, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"image pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape mixing ``batch`` with stored history."""
        if self.size == 0:
            return batch
        batch = batch.detach()
        out = []
        for image in batch:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            coin = float(torch.rand((), generator=self.generator))
            if coin < 0.5:
                index = int(torch.randint(len(self.images), (), generator=self.generator))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0).to(batch.device)

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        stored = (torch.cat(self.images, 0).cpu() if self.images else torch.empty(0))
        return {"size": self.size, "images": stored, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor | int], *,
                        device: torch.device | str = "cpu") -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"pool size mismatch: checkpoint {state['size']}, config {self.size}")
        images = state["images"]
        assert isinstance(images, torch.Tensor)
        self.images = [img.unsqueeze(0).to(device) for img in images] if images.numel() else []
        rng = state["rng"]
        assert isinstance(rng, torch.Tensor)
        self.generator.set_state(rng)
