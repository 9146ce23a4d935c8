#!/usr/bin/env bash
# Stop the single-node test cluster started by start.sh (munge is left running).
state="${GRPO_ZOO_SLURM_STATE:-/tmp/grpo-zoo-slurm}"
for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid"; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
sleep 1
pkill -f "slurmd -f $state/slurm.conf" 2>/dev/null || true
pkill -f "slurmctld -f $state/slurm.conf" 2>/dev/null || true
exit 0
