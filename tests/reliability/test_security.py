"""Security: TLS and mutual TLS with certificates made in the test, bearer-token auth, health
open to probes, the metrics port on its own interface."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reliability_support import SERVER_ENV, SERVING, expected_tokens, make_logits, wait_for

from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.cli.main import parse_args
from samplerd.service.client import SamplerClient, build_request
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.security import load_tokens, open_channel, token_matches

pytestmark = pytest.mark.e2e

TOKENS = ("first-token-3f9a", "second-token-77c1")
METRICS_HOST = "127.0.0.2"  # another loopback address: the metrics port is not on the gRPC one


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_cert(common: str, issuer: Pem | None, *, ca: bool = False, server: bool = False) -> Pem:
    """A P-256 certificate valid for a day, self-signed when ``issuer`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_key = serialization.load_pem_private_key(issuer.key, None) if issuer else key
    issuer_name = x509.load_pem_x509_certificate(issuer.cert).subject if issuer else _name(common)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    rogue_client: Pem  # signed by a CA the server does not trust
    directory: Path

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = make_cert("samplerd test CA", None, ca=True)
    rogue_ca = make_cert("rogue CA", None, ca=True)
    return Pki(ca, make_cert("samplerd", ca, server=True), make_cert("client", ca),
               make_cert("rogue client", rogue_ca), tmp_path_factory.mktemp("pki"))


def wait_serving_tls(server: ServerProcess, credentials: grpc.ChannelCredentials) -> None:
    """Health over TLS (``ServerProcess.wait_serving`` dials plaintext)."""
    with grpc.secure_channel(server.target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert server.process.poll() is None, "\n".join(server.output)
            try:
                return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == SERVING
            except grpc.RpcError:
                return False

        wait_for(serving, 180, "SERVING over TLS", interval_s=0.3)


# -- TLS + tokens + metrics interface --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(pki: Pki, ray_address: str) -> Iterator[ServerProcess]:
    """TLS, two bearer tokens, metrics on 127.0.0.2."""
    tokens = pki.write("tokens", f"# samplerd tokens\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n".encode())
    server = start_server(
        "--device", "cpu", "--workers", "1", "--ray-address", ray_address,
        "--tls-cert", pki.write("server.pem", pki.server.cert), "--tls-key", pki.write("server.key", pki.server.key),
        "--auth-token-file", tokens, "--metrics-host", METRICS_HOST, env=SERVER_ENV,
    )
    try:
        wait_serving_tls(server, grpc.ssl_channel_credentials(pki.ca.cert))
        yield server
    finally:
        server.terminate()


def probe_case() -> tuple[pb.SampleRequest, list[list[int]]]:
    logits = make_logits(2, 500, seed=11)
    return build_request(logits, top_p=0.8, seed=11), expected_tokens(logits, {"top_p": 0.8, "seed": 11})


def call_code(channel: grpc.Channel, request: object, metadata=None, raw: bool = False) -> str:
    method = channel.unary_unary("/samplerd.v1.Sampler/Sample") if raw else channel.unary_unary(
        "/samplerd.v1.Sampler/Sample", request_serializer=pb.SampleRequest.SerializeToString,
        response_deserializer=pb.SampleResponse.FromString)
    try:
        method(request, timeout=30, metadata=metadata)
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


def test_tls_with_either_token_serves_the_right_tokens(tls_server: ServerProcess, pki: Pki) -> None:
    request, expected = probe_case()
    for token in TOKENS:
        with SamplerClient(tls_server.target, ca=pki.ca.cert, token=token, timeout=30) as client:
            result = client.sample(make_logits(2, 500, seed=11), top_p=0.8, seed=11)
        assert result.token_ids == expected
    with open_channel(tls_server.target, ca=pki.ca.cert, token=TOKENS[0]) as channel:
        assert call_code(channel, request) == "OK"


@pytest.mark.parametrize("metadata", [
    None,
    (("authorization", "Bearer wrong-token"),),
    (("authorization", f"Basic {TOKENS[0]}"),),
    (("authorization", f"Bearer {TOKENS[0]}x"),),
    (("authorization", f"Bearer {TOKENS[0][:-1]}"),),
    (("authorization", "Bearer"),),
    (("x-api-key", TOKENS[0]),),
], ids=["none", "wrong", "basic-scheme", "longer", "prefix", "empty", "other-header"])
def test_calls_without_a_valid_bearer_token_are_unauthenticated(tls_server: ServerProcess, pki: Pki, metadata) -> None:
    request, _ = probe_case()
    with open_channel(tls_server.target, ca=pki.ca.cert) as channel:
        assert call_code(channel, request, metadata) == "UNAUTHENTICATED"
        assert call_code(channel, b"\xff\xff not even a request", metadata, raw=True) == "UNAUTHENTICATED"


def test_token_check_covers_every_rpc_but_health_and_reflection(tls_server: ServerProcess, pki: Pki) -> None:
    """ListStrategies needs a token; health and reflection answer without one."""
    with open_channel(tls_server.target, ca=pki.ca.cert) as channel:
        list_strategies = channel.unary_unary(
            "/samplerd.v1.Sampler/ListStrategies", request_serializer=pb.ListStrategiesRequest.SerializeToString,
            response_deserializer=pb.ListStrategiesResponse.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            list_strategies(pb.ListStrategiesRequest(), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "samplerd.v1.Sampler" in names


def test_plaintext_and_untrusted_clients_cannot_talk_to_a_tls_port(tls_server: ServerProcess, pki: Pki) -> None:
    request, _ = probe_case()
    metadata = (("authorization", f"Bearer {TOKENS[0]}"),)
    with grpc.insecure_channel(tls_server.target) as channel:
        assert call_code(channel, request, metadata) == "UNAVAILABLE"
    with open_channel(tls_server.target, ca=pki.rogue_client.cert) as channel:  # does not trust the server
        assert call_code(channel, request, metadata) == "UNAVAILABLE"


def test_metrics_port_is_bound_to_its_own_interface(tls_server: ServerProcess) -> None:
    with urllib.request.urlopen(f"http://{METRICS_HOST}:{tls_server.metrics_port}/metrics", timeout=10) as reply:
        assert b"samplerd_requests" in reply.read()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_server.metrics_port}/metrics", timeout=5)


# -- mutual TLS ------------------------------------------------------------------------------


def test_mutual_tls_accepts_only_clients_with_a_certificate_from_the_client_ca(pki: Pki, ray_address: str) -> None:
    server = start_server(
        "--device", "cpu", "--workers", "1", "--ray-address", ray_address,
        "--tls-cert", pki.write("m-server.pem", pki.server.cert),
        "--tls-key", pki.write("m-server.key", pki.server.key),
        "--tls-client-ca", pki.write("client-ca.pem", pki.ca.cert), env=SERVER_ENV,
    )
    try:
        wait_serving_tls(server, grpc.ssl_channel_credentials(pki.ca.cert, pki.client.key, pki.client.cert))
        request, expected = probe_case()
        with SamplerClient(server.target, ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key,
                           timeout=30) as client:
            assert client.sample(make_logits(2, 500, seed=11), top_p=0.8, seed=11).token_ids == expected
        with open_channel(server.target, ca=pki.ca.cert) as channel:  # no client certificate
            assert call_code(channel, request) == "UNAVAILABLE"
        with open_channel(server.target, ca=pki.ca.cert, cert=pki.rogue_client.cert,
                          key=pki.rogue_client.key) as channel:
            assert call_code(channel, request) == "UNAVAILABLE"
    finally:
        server.terminate()


# -- configuration ---------------------------------------------------------------------------


def test_token_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n abc \ndef\n")
    assert load_tokens(path) == (b"abc", b"def")
    for bad in ("", "# only a comment\n", "two words\n", "x" * 5000 + "\n"):
        path.write_text(bad)
        with pytest.raises(ValueError):
            load_tokens(path)


def test_token_matching_compares_against_every_token() -> None:
    tokens = (b"alpha", b"beta")
    assert token_matches(b"beta", tokens) and token_matches(b"alpha", tokens)
    assert not token_matches(b"alph", tokens) and not token_matches(b"", tokens)
    assert not token_matches(b"alphaX", tokens)


def test_security_flags_and_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("t\n")
    args = parse_args(["serve", "--metrics-host", "10.0.0.7"], environ={"SAMPLERD_AUTH_TOKEN_FILE": str(token_file)})
    assert args.auth_token_file == str(token_file) and args.metrics_host == "10.0.0.7"
    assert args.tls_cert is None and args.tls_key is None and args.tls_client_ca is None


def test_incomplete_tls_configuration_fails_to_start(pki: Pki) -> None:
    """--tls-cert without --tls-key is a one-line start-up error, not a plaintext server."""
    command = [sys.executable, "-m", "samplerd.service.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0", "--device", "cpu", "--tls-cert", pki.write("lonely.pem", pki.server.cert)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **SERVER_ENV})
    assert done.returncode != 0
    assert "--tls-key" in done.stderr, done.stderr
    assert time.monotonic() - started < 120
