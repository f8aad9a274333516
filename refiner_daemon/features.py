"""Deprecated: moved to :mod:`refiner_daemon.common.features`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.features", "refiner_daemon.common.features")
reexport(globals(), "refiner_daemon.common.devices", "refiner_daemon.common.features", "refiner_daemon.common.images")

from refiner_daemon.evaluation.gap_report import list_images  # noqa: F401  (dataset-aware)
