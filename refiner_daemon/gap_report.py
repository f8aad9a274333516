"""Deprecated: moved to :mod:`refiner_daemon.evaluation.gap_report`. This path works for one release, with a warning."""

from refiner_daemon._moved import reexport, warn_moved

warn_moved("refiner_daemon.gap_report", "refiner_daemon.evaluation.gap_report")
reexport(globals(), "refiner_daemon.evaluation.gap_report")

from refiner_daemon.evaluation.gap_report import main

if __name__ == "__main__":
    raise SystemExit(main())
