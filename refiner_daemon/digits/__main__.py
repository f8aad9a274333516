"""``python -m refiner_daemon.digits``: the digits experiment (see ``experiment.py``)."""

from refiner_daemon.digits.experiment import main

raise SystemExit(main())
