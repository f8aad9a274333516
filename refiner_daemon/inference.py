"""Deprecated: moved to :mod:`refiner_daemon.refiner.inference`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.inference", "refiner_daemon.refiner.inference")
reexport(globals(), "refiner_daemon.refiner.inference")

