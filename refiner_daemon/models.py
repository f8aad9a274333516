"""Deprecated: moved to :mod:`refiner_daemon.refiner.networks`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.models", "refiner_daemon.refiner.networks")
reexport(globals(), "refiner_daemon.refiner.networks")

