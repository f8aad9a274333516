"""Deprecated: moved to :mod:`refiner_daemon.serve.jobs`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.jobs", "refiner_daemon.serve.jobs")
reexport(globals(), "refiner_daemon.serve.jobs")

