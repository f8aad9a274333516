"""Judging refiners: the thesis's experiment (Algorithm 3) end to end, the synthetic-to-real gap
report, and the photographic stand-in for a real domain. Uses ``common``, ``refiner`` and
``detector``.

Entry points: ``python -m refiner_daemon.evaluation.pipeline`` (reads top to bottom as the
experiment: render, crop, train refiners, refine, train detectors, evaluate, report) and
``python -m refiner_daemon.evaluation.gap_report``.
"""
