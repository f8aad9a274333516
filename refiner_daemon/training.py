"""Deprecated: moved to :mod:`refiner_daemon.refiner.training`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.training", "refiner_daemon.refiner.training")
reexport(globals(), "refiner_daemon.refiner.training")

