"""Deprecated: moved to :mod:`refiner_daemon.refiner.losses`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.losses", "refiner_daemon.refiner.losses")
reexport(globals(), "refiner_daemon.refiner.losses")

