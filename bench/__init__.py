"""Benchmarks. Each ``bench_*.py`` module has a ``main()`` that prints a small table, writes
JSON under ``bench/results/`` and compares against a named baseline measured in the same run."""
