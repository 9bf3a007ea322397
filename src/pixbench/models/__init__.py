"""Models: no I/O, explicit typed keyword arguments."""
