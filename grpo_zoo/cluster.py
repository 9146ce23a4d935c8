"""Cluster profiles (slurm/clusters/*.yaml) -> submitit parameters, i.e. the sbatch/srun lines.

A profile says what one node of the cluster has (`gpus_per_node`, `cpus_per_task`, `mem_gb`,
and optionally how many `nodes` there are); an experiment's `resources` say what one run
needs. A run of G GPUs gets one task per GPU, spread over `nodes` nodes (default: as few as
the profile's nodes hold), so that `--nodes N --ntasks-per-node G/N --gpus-per-node G/N`
appears in the generated sbatch script and srun starts G processes; torch.distributed then
initialises from SLURM's environment (see grpo_zoo/engine.py). A CPU run asks for `tasks`
(processes, default 1) instead. Impossible shapes fail before anything is submitted.
"""

from __future__ import annotations

import math

from grpo_zoo.errors import ConfigError

CLUSTER_KEYS = {
    # key: (kind, least value) -- what a cluster profile may say
    "partition": ("str", None),
    "nodes": ("int", 1),
    "gpus_per_node": ("int", 0),
    "cpus_per_task": ("int", 1),
    "mem_gb": ("int", 1),
    "time_min": ("int", 1),
    "account": ("str", None),
    "constraint": ("str", None),
    "setup": ("list", None),
    "qos": ("str", None),
    "exclusive": ("bool", None),
}


def _positive(resources: dict, key: str, default: int) -> int:
    value = resources.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"resources.{key}: must be a positive integer, got {value!r}")
    return value


def job_shape(cluster: dict, resources: dict) -> tuple[int, int, int]:
    """(nodes, tasks per node, GPUs per node) of one run."""
    per_node = int(cluster.get("gpus_per_node") or 0)
    gpus = resources.get("gpus", 1 if per_node else 0)
    if gpus:
        gpus = _positive(resources, "gpus", gpus)
        nodes = _positive(resources, "nodes", math.ceil(gpus / per_node) if per_node else 1)
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
        tasks_total = _positive(resources, "tasks", 1)
        nodes = _positive(resources, "nodes", 1)
        if tasks_total % nodes:
            raise ConfigError(f"resources.tasks: {tasks_total} tasks do not split evenly over {nodes} nodes")
        tasks, gpus_per_node = tasks_total // nodes, 0
    if cluster.get("nodes") and nodes > int(cluster["nodes"]):
        raise ConfigError(f"resources.nodes: a run needs {nodes} nodes, the cluster profile has {cluster['nodes']}")
    return nodes, tasks, gpus_per_node


def submitit_parameters(kind: str, cluster: dict, resources: dict, max_parallel: int) -> dict:
    """Keyword arguments of submitit's AutoExecutor.update_parameters for one run's job."""
    nodes, tasks, gpus = job_shape(cluster, resources)
    params = {
        "timeout_min": int(resources.get("time_min", cluster.get("time_min", 60 * 24))),
        "tasks_per_node": tasks,
        "nodes": nodes,
        "cpus_per_task": int(resources.get("cpus_per_task", cluster.get("cpus_per_task", 1))),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if kind == "slurm":
        params.update(
            slurm_partition=cluster.get("partition"),
            slurm_array_parallelism=max_parallel,
            slurm_setup=list(cluster.get("setup") or []),
        )
        if cluster.get("mem_gb"):
            params["mem_gb"] = cluster["mem_gb"]
        extra = {key: cluster[key] for key in ("account", "constraint", "qos") if cluster.get(key)}
        if cluster.get("exclusive"):
            extra["exclusive"] = True
        if extra:
            params["slurm_additional_parameters"] = extra
    return {k: v for k, v in params.items() if v is not None}
