# Source me: `. slurm/local-cluster/env.sh`. Makes sbatch/squeue/sacct/srun (and submitit,
# which shells out to them) talk to the local cluster started by start.sh.
# The munge socket path travels inside slurm.conf (AuthInfo=socket=...), so SLURM_CONF is the
# only variable clients need; the rest is for scripts and tests that want to find things.
export PIXBENCH_SLURM_STATE="${PIXBENCH_SLURM_STATE:-/tmp/pixbench-slurm}"
export SLURM_CONF="$PIXBENCH_SLURM_STATE/etc/slurm.conf"
export PIXBENCH_SLURM_PARTITION="debug"
