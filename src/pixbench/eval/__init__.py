"""Measurements and statistics (the analytic FLOPs of the models are in models/flops.py)."""
