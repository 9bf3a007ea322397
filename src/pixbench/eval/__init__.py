"""Analytic FLOPs, measurements and statistics."""
