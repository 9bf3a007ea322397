"""`python -m benchsuite` (with bench/ on the path; `make bench`): see benchsuite.cli_bench."""

from benchsuite.cli_bench import main

raise SystemExit(main())
