"""`python -m bench`: the benchmark table (bench/run.py)."""

from bench.run import main

raise SystemExit(main())
