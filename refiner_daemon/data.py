"""Deprecated: moved to :mod:`refiner_daemon.refiner.data`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.data", "refiner_daemon.refiner.data")
reexport(globals(), "refiner_daemon.refiner.data")

