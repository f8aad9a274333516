"""Deprecated: moved to :mod:`refiner_daemon.evaluation.pipeline`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.pipeline", "refiner_daemon.evaluation.pipeline")
reexport(globals(), "refiner_daemon.evaluation.pipeline")

from refiner_daemon.evaluation.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
