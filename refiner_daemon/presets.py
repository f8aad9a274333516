"""Deprecated: moved to :mod:`refiner_daemon.refiner.presets`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.presets", "refiner_daemon.refiner.presets")
reexport(globals(), "refiner_daemon.refiner.presets")

