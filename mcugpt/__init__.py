"""The commands on top of everything: `mcugpt compile|reference|run|bench|inspect` (cli.py),
a build on the board with its summary (run.py), the benchmark (bench.py), tables (report.py)."""
