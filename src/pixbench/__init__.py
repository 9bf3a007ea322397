"""pixbench: pixel tokens vs patch tokens, reproducibly (arXiv 2406.09415)."""

__version__ = "0.1.0"
