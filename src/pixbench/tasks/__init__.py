"""Tasks: each has train_one_epoch, evaluate and run(spec)."""
