"""Deprecated: moved to :mod:`refiner_daemon.detector.metrics`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.metrics", "refiner_daemon.detector.metrics")
reexport(globals(), "refiner_daemon.common.distances", "refiner_daemon.detector.metrics")

