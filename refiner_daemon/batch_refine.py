"""Deprecated: moved to :mod:`refiner_daemon.refiner.batch_refine`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.batch_refine", "refiner_daemon.refiner.batch_refine")
reexport(globals(), "refiner_daemon.refiner.batch_refine")

