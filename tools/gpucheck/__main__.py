"""`python -m gpucheck`: see gpucheck.cli."""

from gpucheck.cli import main

raise SystemExit(main())
