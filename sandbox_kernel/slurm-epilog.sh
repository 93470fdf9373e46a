#!/bin/sh
# Slurm Epilog for nodes that run sandbox kernels (slurm.conf: Epilog=<this file>; runs as root
# on the node when a job ends, after Slurm killed its processes).
#
# A root kernel's launcher makes its own cgroup (memory, pids limits of the profile) as a
# child of the job step's group. When the job is cancelled, Slurm kills every process of
# the step at once, the launcher's supervisor too, so nobody removes that child group, and
# Slurm cannot remove the step's group while it is there. This removes what is left of the
# job's groups: the sandbox's (killing anything still in them) and then Slurm's, deepest first.
[ -n "$SLURM_JOB_ID" ] || exit 0
case "$SLURM_JOB_ID" in *[!0-9]*) exit 0 ;; esac
for d in /sys/fs/cgroup/*/slurm*/uid_*/job_"$SLURM_JOB_ID" /sys/fs/cgroup/slurm*/uid_*/job_"$SLURM_JOB_ID" \
         /sys/fs/cgroup/system.slice/slurmstepd.scope/job_"$SLURM_JOB_ID"; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -name 'sandbox-kernel-*' | while read -r g; do
        for pid in $(cat "$g/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$g" 2>/dev/null && break; sleep 0.2; done
    done
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done
exit 0
