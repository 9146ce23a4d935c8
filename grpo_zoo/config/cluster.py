"""Cluster profiles (slurm/clusters/*.yaml) -> submitit parameters, i.e. the sbatch/srun lines.

A profile says what one node of the cluster has (`gpus_per_node`, `cpus_per_task`, `mem_gb`,
and optionally how many `nodes` there are); an experiment's `resources` say what one run
needs. A run of G GPUs gets one task per GPU, spread over `nodes` nodes (default: as few as
the profile's nodes hold), so that `--nodes N --ntasks-per-node G/N --gpus-per-node G/N`
appears in the generated sbatch script and srun starts G processes; torch.distributed then
initialises from SLURM's environment (see grpo_zoo/training/engine.py). A CPU run asks for `tasks`
(processes, default 1) instead. Impossible shapes fail before anything is submitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grpo_zoo.config.experiment import Resources
from grpo_zoo.config.schema import num
from grpo_zoo.errors import ConfigError


@dataclass
class ClusterProfile:
    """What one node of a cluster has, and how jobs are submitted there (slurm/clusters/*.yaml)."""

    partition: str | None = None
    """SLURM partition (--partition)."""
    nodes: int | None = num(None, ge=1)
    """Nodes of the cluster a run may span; null: no limit."""
    gpus_per_node: int | None = num(None, ge=0)
    """GPUs one node has; null or 0: a CPU cluster."""
    cpus_per_task: int | None = num(None, ge=1)
    """CPUs per task unless a run's resources say; null: one."""
    mem_gb: int | None = num(None, ge=1)
    """Memory per node in GB (--mem); null: the partition's default."""
    time_min: int | None = num(None, ge=1)
    """Time limit of a job in minutes unless a run's resources say; null: a day."""
    account: str | None = None
    """SLURM account (--account)."""
    constraint: str | None = None
    """SLURM node constraint (--constraint)."""
    setup: list[str] | None = None
    """Shell lines the job script runs before srun (module loads, venv activation)."""
    qos: str | None = None
    """SLURM quality of service (--qos)."""
    exclusive: bool | None = None
    """Whole nodes for a job (--exclusive)."""


def job_shape(cluster: ClusterProfile, resources: Resources) -> tuple[int, int, int]:
    """(nodes, tasks per node, GPUs per node) of one run; its numbers' ranges are checked when built."""
    per_node = cluster.gpus_per_node or 0
    gpus = resources.gpus if resources.gpus is not None else (1 if per_node else 0)
    if gpus:
        nodes = resources.nodes or (math.ceil(gpus / per_node) if per_node else 1)
        if gpus % nodes:
            raise ConfigError(f"resources.gpus: {gpus} GPUs do not split evenly over {nodes} nodes")
        tasks = gpus // nodes
        if per_node and tasks > per_node:
            raise ConfigError(
                f"resources.nodes: {tasks} GPUs per node asked, the profile's nodes have {per_node} "
                f"(gpus_per_node); use nodes: {math.ceil(gpus / per_node)}"
            )
        gpus_per_node = tasks
    else:
        tasks_total = resources.tasks or 1
        nodes = resources.nodes or 1
        if tasks_total % nodes:
            raise ConfigError(f"resources.tasks: {tasks_total} tasks do not split evenly over {nodes} nodes")
        tasks, gpus_per_node = tasks_total // nodes, 0
    if cluster.nodes and nodes > cluster.nodes:
        raise ConfigError(f"resources.nodes: a run needs {nodes} nodes, the cluster profile has {cluster.nodes}")
    return nodes, tasks, gpus_per_node


def submitit_parameters(kind: str, cluster: ClusterProfile, resources: Resources, max_parallel: int) -> dict:
    """Keyword arguments of submitit's AutoExecutor.update_parameters for one run's job."""
    nodes, tasks, gpus = job_shape(cluster, resources)
    params = {
        "timeout_min": resources.time_min or cluster.time_min or 60 * 24,
        "tasks_per_node": tasks,
        "nodes": nodes,
        "cpus_per_task": resources.cpus_per_task or cluster.cpus_per_task or 1,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if kind == "slurm":
        params.update(
            slurm_partition=cluster.partition,
            slurm_array_parallelism=max_parallel,
            slurm_setup=list(cluster.setup or []),
        )
        if cluster.mem_gb:
            params["mem_gb"] = cluster.mem_gb
        extra = {
            key: value
            for key, value in [("account", cluster.account), ("constraint", cluster.constraint), ("qos", cluster.qos)]
            if value
        }
        if cluster.exclusive:
            extra["exclusive"] = True
        if extra:
            params["slurm_additional_parameters"] = extra
    return {k: v for k, v in params.items() if v is not None}
