"""deploy/: every overlay renders (kubectl kustomize, or the subset renderer where kubectl is
missing; both must agree) and every object validates against the Kubernetes 1.31 schemas
(kubernetes-validate, strict). Probes point at the health service and port each service's own
main.py serves, given the container's env and args, and a real server started from that config
knows the probed health entry; headless Services and dns:/// targets line up; network policies
let each tier reach only what it calls; secrets come only from Secrets; the gpu overlay serves
Triton from the same repository on the same port; config.pbtxt parses with Triton's ModelConfig."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2 as mc

from segxalpb.trainer.v1 import trainer_pb2
from services.common.channel import make_channel
from services.common.server import LIVENESS_SERVICE
from tests.kustomize_support import kubectl_available, object_key, render, render_kubectl, render_subset

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = ["cpu", "gpu", "external-db"]
K8S_VERSION = "1.31.0"
NAMESPACE = "segxal"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o: render(DEPLOY / "overlays" / o) for o in OVERLAYS}


def _find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(docs: list[dict], name: str) -> dict:
    return _find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict[str, str | None]:
    """Literal env values; None for those from a Secret / field ref."""
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ---------------------------------------------------------------- render and validate

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate_against_kubernetes_schemas(rendered, overlay):
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy",
            "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, object_key(doc)
    assert "Secret" not in kinds  # secrets are made in the cluster, never shipped here


def test_fleet_job_manifest_validates():
    doc = yaml.safe_load((DEPLOY / "base" / "fleet-job.yaml").read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["spec"]["completionMode"] == "Indexed"


def test_validation_is_strict_enough_to_catch_a_misspelled_field(rendered):
    bad = yaml.safe_load(yaml.safe_dump(_find(rendered["cpu"], "Deployment", "eem")))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.skipif(not kubectl_available(), reason="kubectl not installed: the subset renderer is used alone")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_subset_renderer_agrees_with_kubectl_kustomize(overlay):
    ours = {object_key(d): d for d in render_subset(DEPLOY / "overlays" / overlay)}
    theirs = {object_key(d): d for d in render_kubectl(DEPLOY / "overlays" / overlay)}
    assert ours == theirs


# ---------------------------------------------------------------- probes, ports, grace

def _configured(monkeypatch, container: dict, secret_values: dict[str, str]):
    """Set the container's literal env (and stand-ins for secret-sourced values) in os.environ."""
    for name, value in _env(container).items():
        monkeypatch.setenv(name, value if value is not None else secret_values[name])
    return container.get("args", [])


@contextlib.contextmanager
def _started(server):
    server.start()
    try:
        yield server
    finally:
        server.stop(0)


def _health_status(target: str, service: str) -> str:
    with make_channel(target) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as e:
            return e.code().name  # NOT_FOUND: the server has no such health entry
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _probe_pairs(container: dict) -> tuple[dict, dict]:
    return container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"]


def test_inference_probes_match_its_main_and_a_real_server(rendered, monkeypatch, tmp_path):
    from services.inference import main as inference_main
    from services.inference.server import SERVICE_NAME, InferenceServer

    c = _container(rendered["cpu"], "inference")
    cfg = inference_main.build_config(_configured(monkeypatch, c, {}))
    port = int(cfg.server.address.rsplit(":", 1)[1])
    ready, live = _probe_pairs(c)
    assert (ready["port"], ready["service"]) == (port, SERVICE_NAME)
    assert (live["port"], live["service"]) == (port, LIVENESS_SERVICE)
    assert [p["containerPort"] for p in c["ports"]] == [port]
    cfg.repository, cfg.server.address = str(tmp_path), "127.0.0.1:0"  # same server, free port, no models
    with _started(InferenceServer(cfg)) as server:
        # a known entry (SERVING: an empty repository has no model left to load); a wrong name
        # in the probe would be NOT_FOUND and the pod never ready
        assert _health_status(server.target, ready["service"]) == "SERVING"
        assert _health_status(server.target, "inference.GRPCInferenceServic") == "NOT_FOUND"
        assert _health_status(server.target, live["service"]) == "SERVING"


def test_eem_probes_match_its_main_and_a_real_server(rendered, monkeypatch, tmp_path):
    from services.eem import main as eem_main
    from services.eem.server import EemServer
    from services.eem.wire import SERVICE_NAME

    c = _container(rendered["cpu"], "eem")
    args = _configured(monkeypatch, c, {})  # before build_parser: its defaults read the env
    cfg = eem_main.config_from_args(eem_main.build_parser().parse_args(args))
    port = int(cfg.server.address.rsplit(":", 1)[1])
    ready, live = _probe_pairs(c)
    assert (ready["port"], ready["service"]) == (port, SERVICE_NAME)
    assert (live["port"], live["service"]) == (port, LIVENESS_SERVICE)
    assert cfg.seg_target == cfg.depth_target == "dns:///inference.segxal.svc.cluster.local:8001"
    cfg.server.address, cfg.seg_target, cfg.depth_target = "127.0.0.1:0", "127.0.0.1:1", "127.0.0.1:1"
    cfg.storage_roots = [str(tmp_path)]
    with _started(EemServer(cfg)) as server:
        assert _health_status(server.target, ready["service"]) == "NOT_SERVING"  # known; backends down
        assert _health_status(server.target, live["service"]) == "SERVING"


def test_coordinator_probes_use_the_plaintext_health_port_of_its_main_and_a_real_server(
        rendered, monkeypatch, tmp_path):
    from services.coordinator import main as coordinator_main
    from services.coordinator.server import SERVICE_NAME, CoordinatorServer

    c = _container(rendered["cpu"], "coordinator")
    args = _configured(monkeypatch, c, {"SEGXAL_COORDINATOR_DB": f"sqlite://{tmp_path / 'c.db'}"})
    cfg = coordinator_main.config_from_args(coordinator_main.build_parser().parse_args(args))
    srv = cfg.server
    assert srv.tls_cert and srv.auth_tokens_file  # TLS + tokens on the serving port...
    host, port = srv.address.rsplit(":", 1)
    health_port = int(srv.health_address.rsplit(":", 1)[1])
    ready, live = _probe_pairs(c)
    assert (ready["port"], ready["service"]) == (health_port, SERVICE_NAME)  # ...probes on plaintext
    assert (live["port"], live["service"]) == (health_port, LIVENESS_SERVICE)
    assert sorted(p["containerPort"] for p in c["ports"]) == sorted([int(port), health_port])
    assert host == "0.0.0.0" and cfg.eem_target == "dns:///eem.segxal.svc.cluster.local:50053"
    srv.address, srv.health_address = "127.0.0.1:0", "127.0.0.1:0"
    srv.tls_cert = srv.tls_key = srv.auth_tokens_file = None  # the mounted Secrets do not exist here
    cfg.storage = str(tmp_path / "storage")
    with _started(CoordinatorServer(cfg)) as server:
        health_target = f"127.0.0.1:{server.grpc.health_port}"
        assert _health_status(health_target, ready["service"]) == "SERVING"
        assert _health_status(health_target, live["service"]) == "SERVING"


def test_trainer_probes_match_its_main_and_a_real_server(rendered, monkeypatch, tmp_path, tiny_dataset):
    from services.trainer import main as trainer_main
    from services.trainer.server import TrainerServer
    from services.trainer.wire import SERVICE_NAME

    c = _container(rendered["cpu"], "trainer")
    args = []
    for a in _configured(monkeypatch, c, {}):  # files mounted from Secrets: stand-ins in tmp_path
        flag, _, value = a.partition("=")
        if value.startswith("/etc/segxal/"):
            stand_in = tmp_path / "secrets" / value.strip("/").replace("/", "_")
            stand_in.parent.mkdir(exist_ok=True)
            stand_in.write_text("stand-in")
            a = f"{flag}={stand_in}"
        args.append(a)
    cfg = trainer_main.config_from_args(trainer_main.build_parser().parse_args(args))
    assert cfg.coordinator and cfg.coordinator_channel.tls_ca and cfg.coordinator_channel.bearer_token
    port = int(cfg.server.address.rsplit(":", 1)[1])
    ready, live = _probe_pairs(c)
    assert (ready["port"], ready["service"]) == (port, SERVICE_NAME)
    assert SERVICE_NAME == trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
    assert (live["port"], live["service"]) == (port, LIVENESS_SERVICE)
    assert cfg.repository == _env(_container(rendered["cpu"], "inference"))["SEGXAL_INFERENCE_REPO"]
    for folder in ("repo", "state"):
        (tmp_path / folder).mkdir()
    cfg.repository, cfg.state_dir = str(tmp_path / "repo"), str(tmp_path / "state")
    cfg.data, cfg.storage_roots, cfg.server.address = str(tiny_dataset), [str(tiny_dataset)], "127.0.0.1:0"
    with _started(TrainerServer(cfg)) as server:
        target = f"127.0.0.1:{server.grpc.port}"
        assert _health_status(target, ready["service"]) != "NOT_FOUND"
        assert _health_status(target, live["service"]) == "SERVING"


@pytest.mark.parametrize("name", ["inference", "eem", "coordinator", "trainer"])
def test_termination_grace_covers_prestop_and_server_grace(rendered, name):
    pod = _find(rendered["cpu"], "Deployment", name)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env, args = _env(c), c.get("args", [])
    grace = next((float(v) for k, v in env.items() if k.endswith("_GRACE_S")), None)
    if grace is None:
        grace = float(next(a.split("=", 1)[1] for a in args if a.startswith("--grace-s=")))
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    budget = float(command[1]) + grace
    assert budget <= pod["terminationGracePeriodSeconds"] <= budget + 10
    res = c["resources"]
    assert set(res["requests"]) >= {"cpu", "memory"} and set(res["limits"]) >= {"cpu", "memory"}


# ---------------------------------------------------------------- services and targets

_DNS_TARGET = re.compile(r"^dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)$")


def _targets(docs: list[dict]) -> list[str]:
    out = []
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        c = d["spec"]["template"]["spec"]["containers"][0]
        out += [v for v in _env(c).values() if v and v.startswith("dns:")]
        out += [a.split("=", 1)[1] for a in c.get("args", []) if "=dns:" in a]
    job = yaml.safe_load((DEPLOY / "base" / "fleet-job.yaml").read_text())
    out += [a.split("=", 1)[1] for a in job["spec"]["template"]["spec"]["containers"][0]["args"] if "=dns:" in a]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_dns_target_names_a_headless_service_port_its_pods_listen_on(rendered, overlay):
    docs = rendered[overlay]
    targets = _targets(docs)
    assert len(targets) >= 5
    for target in targets:
        m = _DNS_TARGET.match(target)
        assert m, target
        name, namespace, port = m.group(1), m.group(2), int(m.group(3))
        assert namespace == NAMESPACE
        svc = _find(docs, "Service", name)
        assert svc["spec"]["clusterIP"] == "None"  # headless: DNS gives pod IPs for round_robin
        assert port in [p["port"] for p in svc["spec"]["ports"]]
        pods = _find(docs, "Deployment", name)["spec"]["template"]
        assert all(pods["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
        assert port in [p["containerPort"] for p in pods["spec"]["containers"][0]["ports"]]


def test_hpa_scales_the_eem_deployment(rendered):
    hpa = _find(rendered["cpu"], "HorizontalPodAutoscaler", "eem")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "eem"}
    assert "replicas" not in _find(rendered["cpu"], "Deployment", "eem")["spec"]  # the HPA owns it
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_coordinator_runs_replicas_on_postgres_with_the_url_from_a_secret(rendered):
    for overlay, secret in (("cpu", "segxal-db"), ("external-db", "segxal-external-db")):
        docs = rendered[overlay]
        coord = _find(docs, "Deployment", "coordinator")
        assert coord["spec"]["replicas"] >= 2
        (db,) = [e for e in coord["spec"]["template"]["spec"]["containers"][0]["env"]
                 if e["name"] == "SEGXAL_COORDINATOR_DB"]
        assert db["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "url"}
    sts = _find(rendered["cpu"], "StatefulSet", "postgres")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not [d for d in rendered["external-db"] if d["metadata"]["name"] == "postgres"]


def test_model_repository_and_frames_share_one_read_write_many_claim(rendered):
    docs = rendered["cpu"]
    pvc = _find(docs, "PersistentVolumeClaim", "segxal-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("inference", "eem", "coordinator", "trainer"):
        volumes = _find(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "segxal-data"}} in volumes


# ---------------------------------------------------------------- secrets

_SECRETISH_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|COORDINATOR_DB$|TLS_KEY)")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_only_from_kubernetes_secrets(rendered, overlay):
    """A credential is either an env value from a secretKeyRef, or a file on a read-only Secret
    volume that a literal env value points at; no literal value is a credential itself."""
    for d in rendered[overlay]:
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
        for c in spec["containers"]:
            secret_mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
            for m in c.get("volumeMounts", []):
                if m["name"] in secret_volumes:
                    assert m.get("readOnly"), (d["metadata"]["name"], m)
            for e in c.get("env", []):
                assert "postgresql://" not in e.get("value", ""), (d["metadata"]["name"], e)
                if not _SECRETISH_NAME.search(e["name"]):
                    continue
                if "value" in e:
                    assert any(e["value"].startswith(mount + "/") for mount in secret_mounts), \
                        (d["metadata"]["name"], e)
                else:
                    assert "secretKeyRef" in e["valueFrom"], (d["metadata"]["name"], e)
            for a in c.get("args", []):
                if a.startswith("--") and _SECRETISH_NAME.search(a.split("=")[0].upper().replace("-", "_")):
                    assert any(a.split("=", 1)[1].startswith(mount + "/") for mount in secret_mounts), a


def test_image_is_built_by_the_dockerfile_as_a_non_root_user(rendered):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "requirements.txt" in dockerfile and re.search(r"^USER 10001$", dockerfile, re.M)
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) \S+$", dockerfile, re.M):
        assert (REPO / src).exists(), src
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"(\.pem|\.key|\.crt|tokens\.json|secret|password)", instructions, re.I)  # nothing baked in
    for name in ("inference", "eem", "coordinator", "trainer"):
        pod = _find(rendered["cpu"], "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
        module = pod["containers"][0]["command"][-1]
        assert pod["containers"][0]["image"] == "segxal:0.1.0"
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module


# ---------------------------------------------------------------- network policies

def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_allows(peer: dict, labels: dict, same_namespace: bool) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" not in peer and not same_namespace:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _rule_allows(rules: list, peer_labels: dict, port: int, same_namespace: bool) -> bool:
    for rule in rules:
        peers = rule.get("from", rule.get("to"))
        ports = [p["port"] for p in rule.get("ports", [])]
        if (peers is None or any(_peer_allows(p, peer_labels, same_namespace) for p in peers)) \
                and (not ports or port in ports):
            return True
    return False


def _allowed(policies: list[dict], src: dict, dst: dict, port: int, same_namespace: bool = True) -> bool:
    """Kubernetes NetworkPolicy semantics for pod -> pod on a TCP port: allowed when (the source has
    no egress policy or one allows it) and (the destination has no ingress policy or one allows it)."""
    def side(pod: dict, kind: str, peer: dict) -> bool:
        applying = [p for p in policies if _selects(p["spec"]["podSelector"], pod)
                    and kind in p["spec"].get("policyTypes", ["Ingress"])]
        field = "egress" if kind == "Egress" else "ingress"
        return not applying or any(_rule_allows(p["spec"].get(field, []), peer, port, same_namespace)
                                   for p in applying)
    return side(src, "Egress", dst) and side(dst, "Ingress", src)


def _pod(component: str) -> dict:
    return {"app.kubernetes.io/name": "segxal", "app.kubernetes.io/component": component}


EEM, INF, COORD, PG, TRAINER, FLEET, LABELER, OPERATOR = (
    _pod("eem"), _pod("inference"), _pod("coordinator"), _pod("postgres"), _pod("trainer"),
    _pod("fleet-worker"), _pod("labeling-client"), _pod("operator"))
ALLOWED = [(LABELER, COORD, 50061), (COORD, EEM, 50053), (COORD, PG, 5432), (EEM, INF, 8001),
           (TRAINER, COORD, 50061), (FLEET, COORD, 50061), (FLEET, EEM, 50053), (OPERATOR, TRAINER, 50055),
           (OPERATOR, COORD, 50061)]
DENIED = [(LABELER, EEM, 50053), (LABELER, PG, 5432), (LABELER, INF, 8001), (EEM, COORD, 50061),
          (EEM, PG, 5432), (INF, EEM, 50053), (INF, COORD, 50061), (COORD, INF, 8001), (TRAINER, EEM, 50053),
          (TRAINER, PG, 5432), (TRAINER, INF, 8001), (FLEET, PG, 5432), (FLEET, INF, 8001), (PG, COORD, 50061),
          (COORD, PG, 50061), (EEM, INF, 8000), (LABELER, TRAINER, 50055), (COORD, TRAINER, 50055),
          (OPERATOR, EEM, 50053), (OPERATOR, INF, 8001)]


def test_network_policies_let_each_tier_reach_only_what_it_calls(rendered):
    policies = [d for d in rendered["cpu"] if d["kind"] == "NetworkPolicy"]
    for src, dst, port in ALLOWED:
        assert _allowed(policies, src, dst, port), (src, dst, port)
    for src, dst, port in DENIED:
        assert not _allowed(policies, src, dst, port), (src, dst, port)
    # labeling clients may live in another namespace: only the coordinator admits them
    assert _allowed(policies, {}, COORD, 50061, same_namespace=False) is False  # an unlabelled pod
    dns = _find(policies, "NetworkPolicy", "allow-dns")
    assert dns["spec"]["podSelector"] == {} and {p["port"] for p in dns["spec"]["egress"][0]["ports"]} == {53}


def test_external_db_overlay_opens_the_database_port_off_cluster_only_for_the_coordinator(rendered):
    policies = [d for d in rendered["external-db"] if d["kind"] == "NetworkPolicy"]
    coord = _find(policies, "NetworkPolicy", "coordinator")
    blocks = [p for r in coord["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    assert blocks and all(r["ports"] == [{"protocol": "TCP", "port": 5432}]
                          for r in coord["spec"]["egress"] if any("ipBlock" in p for p in r["to"]))
    assert _allowed(policies, COORD, EEM, 50053) and not _allowed(policies, EEM, INF, 5432)


# ---------------------------------------------------------------- GPU overlay: Triton

def test_gpu_overlay_serves_triton_from_the_same_repository_on_the_same_port(rendered):
    cpu, gpu = _container(rendered["cpu"], "inference"), _container(rendered["gpu"], "inference")
    assert gpu["image"].startswith("nvcr.io/nvidia/tritonserver:")
    flags = dict(a.split("=", 1) for a in gpu["args"])
    assert flags["--model-repository"] == _env(cpu)["SEGXAL_INFERENCE_REPO"]
    assert int(flags["--grpc-port"]) == cpu["readinessProbe"]["grpc"]["port"] == 8001
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "env" not in gpu and "grpc" not in gpu["readinessProbe"]
    assert gpu["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": int(flags["--http-port"])}
    assert gpu["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": int(flags["--http-port"])}
    mounts = {m["name"]: m["mountPath"] for m in gpu["volumeMounts"]}
    assert flags["--model-repository"].startswith(mounts["data"])
    # the inference client side is untouched: the EEM tier's Deployment is identical
    assert _find(rendered["gpu"], "Deployment", "eem") == _find(rendered["cpu"], "Deployment", "eem")
    assert _find(rendered["gpu"], "Service", "inference") == _find(rendered["cpu"], "Service", "inference")


def test_model_configs_written_by_the_repository_parse_with_tritons_model_config(tmp_path):
    from tests.inference_support import export_models, make_repository

    repo = make_repository(tmp_path / "repo", export_models(tmp_path / "export", seeds=(0,)))
    for model in ("segmentation", "depth"):
        text = (repo.root / model / "config.pbtxt").read_text()
        cfg = text_format.Parse(text, mc.ModelConfig())  # Triton's own message: unknown fields fail
        assert cfg.name == model and cfg.platform == "onnxruntime_onnx"  # Triton: name == folder
        assert cfg.max_batch_size > 0 and cfg.HasField("dynamic_batching")
        assert cfg.input and cfg.output
        assert all(t.data_type != mc.TYPE_INVALID and len(t.dims) > 0 for t in [*cfg.input, *cfg.output])
        assert (repo.root / model / "1" / "model.onnx").is_file()  # <repo>/<model>/<version>/model.onnx
