"""Mutual TLS along the scoring chain, configured from the services' own flags: a client -> EEM
(mTLS) -> inference (mTLS). Certificates are made in the test; a hop without them is refused."""
import numpy as np
import pytest

from segxal import imageio
from segxal.errors import SegxalError
from services.common.channel import ChannelConfig
from services.eem import main as eem_main
from services.eem.api import ScoreOptions
from services.eem.client import EemClient
from services.eem.server import EemServer
from tests.inference_support import H, W, export_models, make_repository, running_server
from tests.tls_support import TestCA


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls_chain")
    ca = TestCA(base / "ca")
    certs = {name: ca.issue(name, server=server) for name, server in
             (("inference", True), ("eem", True), ("eem-to-inference", False), ("labeler", False))}
    repo = make_repository(base / "repo", export_models(base / "exports", seeds=(0,)))
    frames = base / "frames"
    frames.mkdir()
    frame = frames / "f_leftImg8bit.png"
    imageio.write_png(frame, np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    inf_tls = dict(tls_cert=certs["inference"].cert, tls_key=certs["inference"].key, tls_client_ca=ca.ca_path)
    with running_server(repo, **inf_tls) as inference:
        yield dict(ca=ca, certs=certs, inference=inference, frame=frame, frames=frames)


def _eem_server(chain, backend_flags: list[str]) -> EemServer:
    c = chain["certs"]
    args = eem_main.build_parser().parse_args([
        "--seg-target", chain["inference"].target, "--storage-root", str(chain["frames"]),
        "--host", "127.0.0.1", "--port", "0", "--inference-timeout-s", "5",
        "--tls-cert", c["eem"].cert, "--tls-key", c["eem"].key, "--tls-client-ca", chain["ca"].ca_path,
        *backend_flags])
    server = EemServer(eem_main.config_from_args(args))
    server.start()
    return server


def _client_cfg(chain, with_cert: bool = True) -> ChannelConfig:
    c = chain["certs"]["labeler"]
    return ChannelConfig(tls_ca=chain["ca"].ca_path, tls_cert=c.cert if with_cert else None,
                         tls_key=c.key if with_cert else None)


def test_mutual_tls_on_every_hop_scores_a_frame(chain):
    c = chain["certs"]["eem-to-inference"]
    server = _eem_server(chain, ["--backend-tls-ca", chain["ca"].ca_path,
                                 "--backend-tls-cert", c.cert, "--backend-tls-key", c.key])
    try:
        with EemClient(server.target, _client_cfg(chain), timeout_s=30) as eem:
            eem.wait_until_serving(30)
            result = eem.score(str(chain["frame"]), ScoreOptions(regions=True))
            assert result.ok and 0.0 <= result.score <= 1.0 and result.height == H
        with EemClient(server.target, _client_cfg(chain, with_cert=False), timeout_s=5) as anonymous:
            with pytest.raises(SegxalError):  # no client certificate: the handshake fails
                anonymous.score(str(chain["frame"]))
    finally:
        server.stop(0)


def test_eem_without_a_client_certificate_for_inference_is_refused(chain):
    server = _eem_server(chain, ["--backend-tls-ca", chain["ca"].ca_path])  # TLS, but no client cert
    try:
        with EemClient(server.target, _client_cfg(chain), timeout_s=20) as eem:
            assert not eem.is_serving()  # the backends refuse it, so it never reports SERVING
            with pytest.raises(SegxalError, match="UNAVAILABLE|unavailable|inference"):
                eem.score(str(chain["frame"]))
    finally:
        server.stop(0)
