"""The GPU refinement daemon: everything that imports torch lives here, in layers.

- ``common``: devices, checkpoint loading, image folders, ImageNet backbones, CNN features, FD/KID.
- ``refiner``: the GAN refiner (networks, losses, presets, training, inference, dataset refinement).
- ``detector``: the head detector (data, model, training, box metrics, evaluation, export).
- ``serve``: the service, the ZeroMQ server and training jobs.
- ``evaluation``: the experiment pipeline, the gap report, the stand-in real domain.

Dependencies point one way (``tests/test_layering.py``): common <- refiner, detector <- serve,
evaluation. Entry points: ``refiner-daemon`` (:mod:`refiner_daemon.cli`), ``make demo``
(:mod:`refiner_daemon.demo`), ``python -m refiner_daemon.refiner.train``,
``python -m refiner_daemon.evaluation.pipeline``, ``python -m refiner_daemon.evaluation.gap_report``,
``python -m refiner_daemon.detector.train``. Importing this package imports nothing else.
"""
