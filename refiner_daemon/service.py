"""Deprecated: moved to :mod:`refiner_daemon.serve.service`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.service", "refiner_daemon.serve.service")
reexport(globals(), "refiner_daemon.serve.service")

