"""Security between services, through the real coordinator server (SQLite) and its real client:
TLS and mutual TLS from the one server set-up and the one channel factory, with certificates made
here; bearer-token authentication (services.common.auth) with health left open; a labeler can
submit only the tasks it leased; the plaintext health-only port beside a TLS serving port."""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segxal.errors import NotReady, PermissionDenied, SegxalError
from services.common.auth import BearerTokenAuth, authenticated_client_id, token_digest
from services.common.channel import ChannelConfig, make_channel
from services.coordinator.client import CoordinatorClient
from services.coordinator.server import SERVICE_NAME
from tests.coordinator_support import coordinator_config, labels_for, pool_with_tasks, running_coordinator
from tests.tls_support import TestCA

TOKENS = {"labeler-1": "token-of-labeler-1", "labeler-2": "token-of-labeler-2"}


@pytest.fixture()
def pki(tmp_path):
    ca = TestCA(tmp_path / "pki")
    rogue = TestCA(tmp_path / "rogue", name="rogue-ca")  # a CA the server does not trust
    return {"ca": ca, "server": ca.issue("localhost", server=True), "client": ca.issue("labeler-1", server=False),
            "rogue_client": rogue.issue("intruder", server=False)}


def _tokens_file(folder: Path) -> str:
    path = folder / "tokens.json"
    path.write_text(json.dumps({who: token_digest(tok) for who, tok in TOKENS.items()}))
    return str(path)


def _health(target: str, channel_cfg: ChannelConfig | None = None, service: str = SERVICE_NAME) -> int:
    with make_channel(target, channel_cfg) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def _code(excinfo) -> grpc.StatusCode:
    return getattr(excinfo.value, "code", None)


# ---------------------------------------------------------------- TLS and mutual TLS

def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(tmp_path, pki):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage",
                             tls_cert=pki["server"].cert, tls_key=pki["server"].key)
    with running_coordinator(cfg) as (server, _plain):
        target = f"localhost:{server.port}"
        with CoordinatorClient(target, ChannelConfig(tls_ca=pki["ca"].ca_path), timeout_s=10) as client:
            client.create_pool("tls-pool")
            assert [p.name for p in client.list_pools()] == ["tls-pool"]
        with CoordinatorClient(target, timeout_s=5) as plaintext, pytest.raises(NotReady):
            plaintext.list_pools()
        with CoordinatorClient(target, ChannelConfig(tls_ca=pki["rogue_client"].cert), timeout_s=5) as wrong_ca, \
                pytest.raises(NotReady):
            wrong_ca.list_pools()  # the server's certificate is not signed by the CA this client trusts


def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_an_untrusted_one(tmp_path, pki):
    ca = pki["ca"].ca_path
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage",
                             tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=ca)
    with running_coordinator(cfg) as (server, _plain):
        target = f"localhost:{server.port}"
        good = ChannelConfig(tls_ca=ca, tls_cert=pki["client"].cert, tls_key=pki["client"].key)
        with CoordinatorClient(target, good, timeout_s=10) as client:
            assert client.list_pools() == []
        for cfg_ in (ChannelConfig(tls_ca=ca),  # TLS, but no client certificate
                     ChannelConfig(tls_ca=ca, tls_cert=pki["rogue_client"].cert, tls_key=pki["rogue_client"].key)):
            with CoordinatorClient(target, cfg_, timeout_s=5) as refused, pytest.raises(NotReady):
                refused.list_pools()


def test_health_port_answers_plaintext_probes_beside_a_tls_port_and_serves_nothing_else(tmp_path, pki):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage", health_port=0,
                             tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                             tls_client_ca=pki["ca"].ca_path)
    with running_coordinator(cfg) as (server, _plain):
        health_target = f"127.0.0.1:{server.grpc.health_port}"
        assert _health(health_target) == health_pb2.HealthCheckResponse.SERVING  # what the kubelet's probe does
        with CoordinatorClient(health_target, timeout_s=5) as sneaky, pytest.raises(SegxalError) as e:
            sneaky.list_pools()  # the plaintext port is not a way around mutual TLS
        assert _code(e) == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- bearer tokens

def test_bearer_token_is_required_except_for_health_without_internal_error(tmp_path, pki):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage",
                             tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                             auth_tokens_file=_tokens_file(tmp_path))
    ca = pki["ca"].ca_path
    with running_coordinator(cfg) as (server, _plain):
        target = f"localhost:{server.port}"
        for token in (None, "not-a-known-token"):
            with CoordinatorClient(target, ChannelConfig(tls_ca=ca, bearer_token=token), timeout_s=5) as anon, \
                    pytest.raises(SegxalError) as e:
                anon.list_pools()
            assert _code(e) == grpc.StatusCode.UNAUTHENTICATED  # not INTERNAL: the abort keeps its code
        assert _health(target, ChannelConfig(tls_ca=ca)) == health_pb2.HealthCheckResponse.SERVING
        authed = ChannelConfig(tls_ca=ca, bearer_token=TOKENS["labeler-1"])
        with CoordinatorClient(target, authed, client_id="labeler-1", timeout_s=10) as client:
            assert client.list_pools() == []


def test_labeler_submits_only_tasks_it_leased(tmp_path, pki):
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage",
                             tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                             auth_tokens_file=_tokens_file(tmp_path))
    ca = pki["ca"].ca_path
    with running_coordinator(cfg) as (server, _plain):
        target = f"localhost:{server.port}"

        def client(who: str, claims: str | None = None) -> CoordinatorClient:
            return CoordinatorClient(target, ChannelConfig(tls_ca=ca, bearer_token=TOKENS[who]),
                                     client_id=claims or who, timeout_s=30)

        with client("labeler-1") as one, client("labeler-2") as two, \
                client("labeler-2", claims="labeler-1") as impostor:
            pool, _ = pool_with_tasks(one, tmp_path / "frames", 2)
            (task,) = one.lease(pool.pool_id, lease_seconds=60)
            assert task.lease_owner == "labeler-1"
            with pytest.raises(PermissionDenied, match="authenticated as 'labeler-2'"):
                impostor.lease(pool.pool_id)  # claiming another client's id
            with pytest.raises(PermissionDenied, match="authenticated as 'labeler-2'"):
                impostor.submit(task, labels_for(task, 1))
            with pytest.raises(PermissionDenied, match="leased to client 'labeler-1', not to 'labeler-2'"):
                two.submit(task, labels_for(task, 1))  # labeler-1's task and token, labeler-2's identity
            assert list(one.annotations(pool.pool_id)) == []
            reply = one.submit(task, labels_for(task, 1))
            assert reply.annotation.client_id == "labeler-1" and not reply.replayed


def test_authenticated_client_id_without_authentication_is_the_claimed_one():
    assert authenticated_client_id("labeler-9") == "labeler-9"


def test_bearer_auth_identifies_tokens_by_digest_only():
    auth = BearerTokenAuth({who: token_digest(tok) for who, tok in TOKENS.items()})
    assert auth.identify([("authorization", f"Bearer {TOKENS['labeler-2']}")]) == "labeler-2"
    assert auth.identify([("authorization", f"Bearer {token_digest(TOKENS['labeler-2'])}")]) is None
    assert auth.identify([("authorization", TOKENS["labeler-2"])]) is None  # no "Bearer " scheme
    assert auth.identify([]) is None
