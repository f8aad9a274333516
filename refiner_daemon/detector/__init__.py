"""SqueezeDet-style single-class head detector for ceiling fisheye images: datasets and
fisheye-aware augmentation, anchors by k-means, the network and its loss, training with
validation-F1 checkpoint selection, evaluation and ONNX export.

Entry points: :func:`refiner_daemon.detector.training.train_detector` with a
:class:`refiner_daemon.detector.config.DetectorConfig`; the CLIs
``python -m refiner_daemon.detector.train``, ``...detector.evaluate`` and ``...detector.export``.
"""
