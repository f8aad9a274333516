"""The GAN refiner: CycleGAN / AGGAN networks, losses, the thesis's presets, the training loop,
inference and whole-dataset refinement. Uses ``common`` only (and ``protocol``).

Entry points: ``python -m refiner_daemon.refiner.train`` (training CLI),
:func:`refiner_daemon.refiner.training.train_refiner` with a
:class:`~refiner_daemon.refiner.training.RefinerConfig`,
:class:`refiner_daemon.refiner.inference.Refiner` (load a ``.pt`` and refine crops) and
:func:`refiner_daemon.refiner.batch_refine.refine_dataset`.
"""
