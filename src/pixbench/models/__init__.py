"""Models: no I/O, explicit typed keyword arguments; with their analytic FLOPs (flops.py) and
the diffusion schedule and loss DiT trains with (diffusion.py)."""
