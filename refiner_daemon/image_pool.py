"""Deprecated: moved to :mod:`refiner_daemon.refiner.image_pool`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.image_pool", "refiner_daemon.refiner.image_pool")
reexport(globals(), "refiner_daemon.refiner.image_pool")

