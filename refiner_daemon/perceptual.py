"""Deprecated: moved to :mod:`refiner_daemon.refiner.perceptual`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.perceptual", "refiner_daemon.refiner.perceptual")
reexport(globals(), "refiner_daemon.refiner.perceptual")

