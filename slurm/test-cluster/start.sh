#!/usr/bin/env bash
# Start a single-node SLURM cluster on loopback (munge, slurmctld, slurmd) as root.
# Needs Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`).
# Prints `export SLURM_CONF=...`: eval it to point sbatch/squeue/scontrol (and submitit) here.
#   eval "$(bash slurm/test-cluster/start.sh)"
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # slurmctld, slurmd and munged live there; a minimal PATH may lack them
here="$(cd "$(dirname "$0")" && pwd)"
state="${GRPO_ZOO_SLURM_STATE:-/tmp/grpo-zoo-slurm}"
mkdir -p "$state/ctld" "$state/d"
host="$(hostname -s)"
# The machine's CPUs (nproc alone obeys OMP_NUM_THREADS, and a 1-CPU node never runs a 2-task job).
cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# munge: a key, then the daemon
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge && mungekey --create --keyfile /etc/munge/munge.key >&2 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! munge -n >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then su -s /bin/sh munge -c /usr/sbin/munged >&2 || /usr/sbin/munged --force >&2
  else /usr/sbin/munged --force >&2; fi
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM@|$mem|g" \
    -e "s|@CTLD_PORT@|${GRPO_ZOO_SLURMCTLD_PORT:-16817}|g" -e "s|@SLURMD_PORT@|${GRPO_ZOO_SLURMD_PORT:-16818}|g" \
    "$here/slurm.conf.in" > "$state/slurm.conf"
export SLURM_CONF="$state/slurm.conf"

# A cluster left running with another node size (an older start) is restarted with this one.
if scontrol ping >/dev/null 2>&1 && [ "$(sinfo -h -N -o '%c' 2>/dev/null | head -1)" != "$cpus" ]; then
  bash "$here/stop.sh"
fi
if ! scontrol ping >/dev/null 2>&1; then
  slurmctld -f "$SLURM_CONF" -i >&2
  slurmd -f "$SLURM_CONF" -N "$host" >&2
fi
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm test cluster did not come up; see $state/slurmctld.log and $state/slurmd.log" >&2
exit 1
