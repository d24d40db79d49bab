"""The fleet ranking Job: built with the kubernetes client's own models, created with BatchV1Api
in the cluster of the current kubeconfig context, and watched until it ends; then the shard files
are merged into the fleet's ranking.

    segxal fleet run --count 16 --parallelism 4 --logs /data/drive-logs --dry-run   # the YAML
    segxal fleet run --count 16 --parallelism 4 --logs /data/drive-logs            # create + watch
    segxal fleet ranking --results /data/fleet/results --count 16 --top 20

The Job is an Indexed Job (completionMode: Indexed): index i runs `python -m services.fleet.worker`
on its shard of the logs (services.fleet.worker.shard_of). A failed index is retried on its own
(backoffLimitPerIndex) and its rerun scores only what is missing, so no score is duplicated;
exit code 2 (input no retry can fix) fails the index at once (podFailurePolicy FailIndex), and
pod disruptions (preemption, node drain) do not count as failures. deploy/base/fleet-job.yaml is
`segxal fleet run --dry-run` with the defaults (a test checks that they agree).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from segxal.errors import FailedPrecondition, InvalidInput, NotReady
from segxal.selection import SelectionSpec

# The kubernetes package is imported inside the functions that need it: `segxal --help` and the
# other subcommands start without paying for it.

COMPONENT = "fleet-worker"
PART_OF = "segxal"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
EXIT_FAIL_INDEX = 2  # services.fleet.worker.EXIT_FAIL_INDEX (not imported: no gRPC stack for a dry run)


@dataclass
class FleetJobConfig:
    name: str = "segxal-fleet-rank"
    namespace: str = "segxal"
    image: str = "segxal:0.1.0"  # deploy/Dockerfile; overlays point the `segxal` image at a registry
    count: int = 16  # completions = indices = shards of the logs
    parallelism: int = 4  # indices running at once; the EEM tier's HPA scales with the load
    logs: list[str] = field(default_factory=lambda: ["/data/drive-logs"])  # on the shared volume
    pool: str = "fleet"
    results: str = "/data/fleet/results"
    coordinator: str = "dns:///coordinator.segxal.svc.cluster.local:50061"  # headless Service, round_robin
    eem: str = "dns:///eem.segxal.svc.cluster.local:50053"
    backoff_limit_per_index: int = 3  # retries of one index before it counts as failed
    ttl_after_finished_s: int = 7 * 24 * 3600  # keep the finished Job (and its logs) a week
    data_claim: str = "segxal-data"  # the ReadWriteMany PVC of deploy/base/storage.yaml
    token_secret: str = "segxal-fleet-token"  # key "token": this worker's coordinator bearer token
    coordinator_tls_secret: str = "segxal-coordinator-tls"  # key "ca.crt": the CA of the coordinator's cert
    cpu_request: str = "250m"  # the worker only streams URIs and scores: EEM does the work
    memory_request: str = "256Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"

    def validate(self) -> "FleetJobConfig":
        """Raises:
            InvalidInput: a count out of range, or no logs.
        """
        if self.count < 1 or self.parallelism < 1:
            raise InvalidInput(f"count and parallelism must be >= 1, got {self.count} and {self.parallelism}")
        if not self.logs:
            raise InvalidInput("at least one log path is required")
        return self


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": PART_OF, "app.kubernetes.io/component": COMPONENT}


def build_job(cfg: FleetJobConfig):
    """The Indexed Job as a kubernetes.client.V1Job."""
    from kubernetes import client as k

    cfg.validate()
    args = ["--index=$(JOB_COMPLETION_INDEX)", f"--count={cfg.count}", f"--pool={cfg.pool}",
            f"--coordinator={cfg.coordinator}", f"--eem={cfg.eem}", f"--results={cfg.results}",
            "--coordinator-token-file=/etc/segxal/token/token",
            "--coordinator-tls-ca=/etc/segxal/coordinator-ca/ca.crt", "--logs", *cfg.logs]
    container = k.V1Container(
        name="worker", image=cfg.image, command=["python", "-m", "services.fleet.worker"], args=args,
        # Set explicitly from the pod's annotation so that $(JOB_COMPLETION_INDEX) in args expands.
        env=[k.V1EnvVar(name="JOB_COMPLETION_INDEX", value_from=k.V1EnvVarSource(
            field_ref=k.V1ObjectFieldSelector(field_path=f"metadata.annotations['{INDEX_ANNOTATION}']")))],
        resources=k.V1ResourceRequirements(requests={"cpu": cfg.cpu_request, "memory": cfg.memory_request},
                                           limits={"cpu": cfg.cpu_limit, "memory": cfg.memory_limit}),
        volume_mounts=[k.V1VolumeMount(name="data", mount_path="/data"),
                       k.V1VolumeMount(name="token", mount_path="/etc/segxal/token", read_only=True),
                       k.V1VolumeMount(name="coordinator-ca", mount_path="/etc/segxal/coordinator-ca",
                                       read_only=True)],
        security_context=k.V1SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True,
                                             capabilities=k.V1Capabilities(drop=["ALL"])))
    pod = k.V1PodSpec(
        restart_policy="Never",  # required by podFailurePolicy; the Job makes a new pod per retry
        containers=[container],
        security_context=k.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, fs_group=10001,
                                                seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault")),
        volumes=[k.V1Volume(name="data", persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
                     claim_name=cfg.data_claim)),
                 k.V1Volume(name="token", secret=k.V1SecretVolumeSource(secret_name=cfg.token_secret)),
                 k.V1Volume(name="coordinator-ca", secret=k.V1SecretVolumeSource(
                     secret_name=cfg.coordinator_tls_secret, items=[k.V1KeyToPath(key="ca.crt", path="ca.crt")]))])
    spec = k.V1JobSpec(
        completion_mode="Indexed", completions=cfg.count, parallelism=cfg.parallelism,
        backoff_limit_per_index=cfg.backoff_limit_per_index, ttl_seconds_after_finished=cfg.ttl_after_finished_s,
        pod_failure_policy=k.V1PodFailurePolicy(rules=[
            k.V1PodFailurePolicyRule(action="FailIndex", on_exit_codes=k.V1PodFailurePolicyOnExitCodesRequirement(
                container_name="worker", operator="In", values=[EXIT_FAIL_INDEX])),
            k.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[
                k.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")])]),
        template=k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=_labels()), spec=pod))
    return k.V1Job(api_version="batch/v1", kind="Job",
                   metadata=k.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace, labels=_labels()), spec=spec)


def job_to_dict(job) -> dict:
    """The Job as plain data, as it is sent to the API server (camelCase, no None fields)."""
    from kubernetes.client import ApiClient
    return ApiClient().sanitize_for_serialization(job)


def job_to_yaml(job) -> str:
    import yaml
    return yaml.safe_dump(job_to_dict(job), sort_keys=False)


# ---------------------------------------------------------------- watching

@dataclass(frozen=True)
class JobProgress:
    active: int
    succeeded: int
    failed: int  # failed pods (retries included)
    completed_indexes: str  # Kubernetes' interval notation, e.g. "0-3,5"
    failed_indexes: str
    finished: bool
    outcome: str  # "running", "complete" or "failed"
    reason: str  # the Failed condition's reason/message, e.g. "FailedIndexes"

    def line(self, completions: int) -> str:
        return (f"{self.outcome}: {self.succeeded}/{completions} indexes done, {self.active} running, "
                f"{self.failed} failed pods; completed [{self.completed_indexes}]"
                + (f", failed [{self.failed_indexes}]" if self.failed_indexes else "")
                + (f" ({self.reason})" if self.reason else ""))


def job_progress(job) -> JobProgress:
    """Where a V1Job stands, from its status (conditions Complete / Failed end it)."""
    status = job.status
    outcome, reason = "running", ""
    for cond in (status.conditions or []) if status else []:
        if cond.status != "True":
            continue
        if cond.type == "Complete":
            outcome = "complete"
        elif cond.type == "Failed":
            outcome, reason = "failed", ": ".join(x for x in (cond.reason, cond.message) if x)
    return JobProgress(active=(status and status.active) or 0, succeeded=(status and status.succeeded) or 0,
                       failed=(status and status.failed) or 0,
                       completed_indexes=(status and status.completed_indexes) or "",
                       failed_indexes=(status and status.failed_indexes) or "",
                       finished=outcome != "running", outcome=outcome, reason=reason)


def watch_job(api, name: str, namespace: str, *, poll_s: float = 5.0, timeout_s: float | None = None,
              on_progress: Callable[[JobProgress], None] = lambda p: None,
              sleep: Callable[[float], None] = time.sleep) -> JobProgress:
    """Poll the Job's status until it completes or fails; report each change.

    Args:
        api: a kubernetes.client.BatchV1Api (anything with read_namespaced_job_status).
    Returns:
        The final progress.
    Raises:
        NotReady: still running after timeout_s.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        progress = job_progress(api.read_namespaced_job_status(name, namespace))
        if progress != last:
            on_progress(progress)
            last = progress
        if progress.finished:
            return progress
        if deadline is not None and time.monotonic() >= deadline:
            raise NotReady(f"job {namespace}/{name} still running after {timeout_s:.0f} s")
        sleep(poll_s)


# ---------------------------------------------------------------- CLI

def _config_from_args(args: argparse.Namespace) -> FleetJobConfig:
    d = FleetJobConfig()
    return FleetJobConfig(name=args.name, namespace=args.namespace, image=args.image, count=args.count,
                          parallelism=args.parallelism, logs=args.logs or d.logs, pool=args.pool,
                          results=args.results, coordinator=args.coordinator, eem=args.eem,
                          backoff_limit_per_index=args.backoff_limit_per_index).validate()


def _cmd_run(args: argparse.Namespace) -> int:
    job = build_job(_config_from_args(args))
    if args.dry_run:
        sys.stdout.write(job_to_yaml(job))
        return 0
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    try:
        config.load_kube_config(context=args.context)  # the current context unless --context
    except config.ConfigException as e:
        raise FailedPrecondition(f"no usable kubeconfig context: {e}") from None
    api = client.BatchV1Api()
    try:
        api.create_namespaced_job(job.metadata.namespace, job)
    except ApiException as e:
        raise FailedPrecondition(f"creating job {job.metadata.namespace}/{job.metadata.name}: "
                                 f"{e.status} {e.reason}") from None
    print(f"created job {job.metadata.namespace}/{job.metadata.name} ({job.spec.completions} indexes)")
    if args.no_watch:
        return 0
    final = watch_job(api, job.metadata.name, job.metadata.namespace, poll_s=args.poll_s,
                      on_progress=lambda p: print(p.line(job.spec.completions), flush=True))
    if final.outcome == "complete":
        _print_ranking(job.spec.template.spec.containers[0], args.top)
    return 0 if final.outcome == "complete" else 1


def _print_ranking(container, top: int) -> None:
    """The merged ranking, when this machine sees the results folder (e.g. run inside the cluster)."""
    from pathlib import Path
    flags = dict(a.split("=", 1) for a in container.args if a.startswith("--") and "=" in a)
    if Path(flags["--results"]).is_dir():
        _show_ranking(flags["--results"], int(flags["--count"]), top)
    else:
        print(f"results are in {flags['--results']} on the cluster's shared volume; merge them with "
              f"`segxal fleet ranking --results {flags['--results']} --count {flags['--count']}` where it is mounted")


def _show_ranking(results: str, count: int, top: int, model_key: str | None = None,
                  selection: str = "") -> None:
    from services.fleet.worker import merge_shards, select_fleet
    ranking = merge_shards(results, count, model_key)
    print(f"model {ranking.model_key}: {len(ranking.frames)} frames ranked"
          + (f"; indexes without results: {ranking.missing_indices}" if ranking.missing_indices else "")
          + (f"; {len(ranking.unscored)} frames unscored" if ranking.unscored else "")
          + (f"; {len(ranking.ingest_errors)} logs ingested in part" if ranking.ingest_errors else ""))
    if selection:  # one global step over every shard's scores and embeddings
        spec = SelectionSpec.parse(selection)
        picks = select_fleet(ranking, top, spec)
        print(f"selection '{spec.text()}': {len(picks)} of {len(ranking.frames)} frames picked "
              f"from {len({p.log_id for p in picks})} drive logs")
        for p in picks:
            r = p.reasons()
            dist = "-" if r["distance"] is None else f"{r['distance']:.3f}"
            print(f"{p.order:5d}  {p.score:.6f}  {p.id}  distance {dist}  gain {r['gain']:.3f}  {p.log_id}")
        return
    for i, r in enumerate(ranking.frames[:top], 1):
        print(f"{i:5d}  {r.score:.6f}  {r.frame_id}  {r.source}")


def _cmd_ranking(args: argparse.Namespace) -> int:
    _show_ranking(args.results, args.count, args.top, args.model_key, args.selection)
    return 0


def register_cli(sub) -> None:
    """`segxal fleet run` and `segxal fleet ranking`."""
    d = FleetJobConfig()
    fleet = sub.add_parser("fleet", help="rank a large set of drive logs with a Kubernetes Indexed Job")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    run = fsub.add_parser("run", help="build the Job, create it in the current kubeconfig context and watch it")
    run.add_argument("--name", default=d.name, help="the Job's name")
    run.add_argument("--namespace", default=d.namespace, help="Kubernetes namespace of the Job")
    run.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    run.add_argument("--image", default=d.image, help="container image of the workers (deploy/Dockerfile)")
    run.add_argument("--count", type=int, default=d.count, help="indexes = shards of the logs")
    run.add_argument("--parallelism", type=int, default=d.parallelism, help="indexes running at once")
    run.add_argument("--logs", nargs="+", default=None, help=f"paths in the pods (default: {d.logs})")
    run.add_argument("--pool", default=d.pool, help="coordinator pool the logs are ingested into")
    run.add_argument("--results", default=d.results,
                     help="folder of the shard result files (in the pods; for ranking: here)")
    run.add_argument("--coordinator", default=d.coordinator, help="coordinator target as the pods see it")
    run.add_argument("--eem", default=d.eem, help="EEM service target as the pods see it")
    run.add_argument("--backoff-limit-per-index", type=int, default=d.backoff_limit_per_index,
                     help="retries of one index before it counts as failed")
    run.add_argument("--dry-run", action="store_true", help="print the Job as YAML and stop")
    run.add_argument("--no-watch", action="store_true", help="create the Job and return")
    run.add_argument("--poll-s", type=float, default=5.0, help="seconds between looks at the Job while watching it")
    run.add_argument("--top", type=int, default=20, help="frames of the ranking to print at the end")
    run.set_defaults(func=_cmd_run)
    rank = fsub.add_parser("ranking", help="merge a run's shard files into the fleet's ranking")
    rank.add_argument("--results", required=True,
                      help="folder of the shard result files (in the pods; for ranking: here)")
    rank.add_argument("--count", type=int, required=True, help="the run's number of indexes")
    rank.add_argument("--top", type=int, default=20, help="frames of the ranking to print")
    rank.add_argument("--model-key", default=None, help="rank by this model version (default: the most used)")
    rank.add_argument("--selection", default="",
                      help="pick --top frames with a composed selection (e.g. 'score=1,diversity=1,log_cap=2', "
                           "segxal/selection/spec.py) instead of listing the top scores")
    rank.set_defaults(func=_cmd_ranking)
