"""Deprecated: moved to :mod:`refiner_daemon.evaluation.standin_domain`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.standin_domain", "refiner_daemon.evaluation.standin_domain")
reexport(globals(), "refiner_daemon.evaluation.standin_domain")

