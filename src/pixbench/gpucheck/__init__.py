"""GPU validation kit: one prepared command that proves every CUDA path of pixbench in minutes.

    python -m pixbench.gpucheck            # on a CUDA machine (make gpu-check)
    python -m pixbench.gpucheck --cpu      # the same steps on the CPU, gloo (make gpu-check-cpu)

Steps (steps.py): the device (env), tiny generated caches and the params (data), every task of
launch.TASKS that trains or evaluates, tiny, on the device with the recipes' precision
(steps_tasks.py), bf16 vs fp32 on one step and flash attention at pixel-token length
(steps_checks.py), DDP over NCCL (ddp.py), and the benchmark suite through pixbench.bench
(`gpu-check`, a cut of `gpu`; `quick` on the CPU) judged by judge.py. harness.py runs each
step in its own process with its own time limit; summary.py writes
gpu-check-summary-<where>.{json,md}; wheels.py prepares what a machine without a network lacks.
"""
