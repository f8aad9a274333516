"""Deprecated: moved to :mod:`refiner_daemon.refiner.train`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.train_refiner", "refiner_daemon.refiner.train")
reexport(globals(), "refiner_daemon.refiner.train")

from refiner_daemon.refiner.train import main

if __name__ == "__main__":
    raise SystemExit(main())
