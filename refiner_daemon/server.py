"""Deprecated: moved to :mod:`refiner_daemon.serve.server`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.server", "refiner_daemon.serve.server")
reexport(globals(), "refiner_daemon.serve.server")

