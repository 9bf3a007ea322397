"""`python -m pixbench.gpucheck`: see pixbench.gpucheck.cli."""

from pixbench.gpucheck.cli import main

raise SystemExit(main())
