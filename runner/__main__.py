"""`python -m runner` is the `syncrun` command."""

from runner.cli import main

raise SystemExit(main())
