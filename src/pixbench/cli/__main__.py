"""`python -m pixbench.cli`."""

from pixbench.cli import main

main()
