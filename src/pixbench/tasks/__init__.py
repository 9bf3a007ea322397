"""Tasks: the task table (table.py), the one training loop (trainer.py) and run dir (runner.py),
and each track's bodies (classify/, mae/, gen/)."""
