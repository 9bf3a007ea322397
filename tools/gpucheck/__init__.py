"""GPU validation kit: one prepared command that proves every CUDA path of pixbench in minutes.

Tooling, not part of the installed pixbench: it runs from the checkout with tools/, bench/ (the
benchmark suite it runs) and src/ on the path, as the Makefile's TOOLS_PATH puts them:

    make gpu-check       # = PYTHONPATH=tools:bench:src python3 -m gpucheck   (a CUDA machine)
    make gpu-check-cpu   # = the same with --cpu: the same steps on the CPU, gloo

Steps (steps.py): the device (env), tiny generated caches and the params (data), every task of
the task table (pixbench.tasks.table) that trains or evaluates, tiny, on the device with the
recipes' precision (steps_tasks.py), bf16 vs fp32 on one step and flash attention at
pixel-token length (steps_checks.py), DDP over NCCL (ddp.py), and the benchmark suite
(bench/benchsuite: `gpu-check`, a cut of `gpu`; `quick` on the CPU) judged by judge.py.
harness.py runs each step in its own process with its own time limit; summary.py writes
gpu-check-summary-<where>.{json,md}; wheels.py prepares what a machine without a network lacks.
"""
