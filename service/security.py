"""Transport security and request hygiene of the gRPC server.

- :func:`server_credentials` / :func:`channel_credentials`: TLS, and mutual TLS when the
  server is given a client CA (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``).
- :class:`BearerTokenInterceptor`: every call must carry ``authorization: Bearer <token>``
  with one of the tokens of ``--auth-token-file`` (one per line), compared in constant time
  (:func:`hmac.compare_digest`, against every token, no early exit); otherwise the call is
  answered UNAUTHENTICATED before its request is even parsed. Health checks and reflection
  stay open, so load-balancer and Kubernetes probes need no token.
- :class:`ShutdownGate`: services registered through it answer UNAVAILABLE once the server
  is shutting down, and INVALID_ARGUMENT for a request whose bytes are not a valid protobuf
  message of the method's type (corrupt wire format, invalid UTF-8 in a string field).
  Without it grpc answers UNKNOWN ("Unexpected DecodeError"), and bad input must never look
  like a server fault.

Nothing here (or anywhere in ``service/`` and ``workers/``) unpickles client bytes: requests
are parsed by protobuf and tensor bytes are only viewed as their declared dtype
(``samplerd.service.codec.decode_tensor``).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

#: Method prefixes that need no token: health (probes) and server reflection.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
#: Longest token line accepted in a token file (a guard against pointing it at a big file).
MAX_TOKEN_BYTES = 4096


def load_tokens(path: str | Path) -> tuple[bytes, ...]:
    """The bearer tokens of a token file: one per line, surrounding whitespace stripped,
    blank lines and ``#`` comments skipped. Raises ``ValueError`` when it holds none or a line
    is too long or contains whitespace."""
    tokens = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) > MAX_TOKEN_BYTES or any(c.isspace() for c in token):
            raise ValueError(f"{path}:{number}: a token is one word of at most {MAX_TOKEN_BYTES} characters")
        tokens.append(token.encode())
    if not tokens:
        raise ValueError(f"{path}: no token (one bearer token per line)")
    return tuple(tokens)


def token_matches(presented: bytes, tokens: Sequence[bytes]) -> bool:
    """Whether ``presented`` equals one of ``tokens``; constant time in the token contents
    (every token is compared, whatever matched before)."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token)
    return matched


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS server credentials from PEM files; with ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=_read(client_ca),
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: str | Path | bytes | None = None, cert: str | Path | bytes | None = None, key: str | Path | bytes | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials: ``ca`` verifies the server (None: the system roots); ``cert``
    and ``key`` are the client's certificate for mutual TLS. Paths or PEM bytes."""

    def pem(value: str | Path | bytes | None) -> bytes | None:
        return value if isinstance(value, bytes) or value is None else Path(value).read_bytes()

    return grpc.ssl_channel_credentials(root_certificates=pem(ca), private_key=pem(key), certificate_chain=pem(cert))


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def _refusing_handler(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str):
    """A handler of the same streaming kind as ``handler`` that answers ``code`` and never
    parses the request (its bytes are handed over raw)."""

    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(request_or_iterator: Any, context: grpc.aio.ServicerContext):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator; abort always raises

    request_streaming = handler is not None and handler.request_streaming
    response_streaming = handler is not None and handler.response_streaming
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries ``authorization: Bearer <token>`` with
    a known token; :data:`OPEN_PREFIXES` (health, reflection) pass without one."""

    def __init__(self, tokens: Sequence[bytes]) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = tuple(tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Let the call through to ``continuation`` or refuse it."""
        method = handler_call_details.method or ""
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        scheme, _, token = (presented or b"").partition(b" ")
        if presented is None or scheme.lower() != b"bearer" or not token_matches(token.strip(), self._tokens):
            handler = await continuation(handler_call_details)
            why = "missing" if presented is None else "invalid"
            return _refusing_handler(
                handler, grpc.StatusCode.UNAUTHENTICATED, f"{why} credentials: send 'authorization: Bearer <token>'"
            )
        return await continuation(handler_call_details)


class _Undecodable:
    """Stands in for a request that failed to parse."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _guard(handler: grpc.RpcMethodHandler, gate: ShutdownGate | None, always_open: bool) -> grpc.RpcMethodHandler:
    """``handler`` answering, in this order: UNAVAILABLE once ``gate`` is closed (unless
    ``always_open``), INVALID_ARGUMENT for a unary request that does not parse (its
    deserializer never raises), else what ``handler`` answers. Same kind of behaviour
    (coroutine or async generator); synchronous behaviours are left as they are.

    Request-streaming methods keep their deserializer: a handler may read them through
    ``context.read()``, which no wrapper of the request iterator would cover.
    """
    kind = ("stream" if handler.request_streaming else "unary") + "_" + (
        "stream" if handler.response_streaming else "unary")
    behaviour = getattr(handler, kind)
    check_request = not handler.request_streaming and handler.request_deserializer is not None
    watched = gate is not None and not always_open

    async def refuse_if_needed(request: Any, context: grpc.aio.ServicerContext) -> None:
        """Abort the call (``context.abort`` raises) when it must be refused."""
        if watched and gate.closed:
            gate.note_call()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry")
        if check_request and isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {request.error}")

    if inspect.isasyncgenfunction(behaviour):

        async def generate(request: Any, context: grpc.aio.ServicerContext):
            await refuse_if_needed(request, context)
            async for response in behaviour(request, context):
                yield response

        wrapped: Callable[..., Any] = generate
    elif inspect.iscoroutinefunction(behaviour):

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_if_needed(request, context)
            return await behaviour(request, context)

        wrapped = call
    else:  # a synchronous handler: grpc runs it in a thread; leave it as it is
        return handler
    changes: dict[str, Any] = {kind: wrapped}
    if check_request:
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as error:
                return _Undecodable(error)

        changes["request_deserializer"] = deserialize
    return handler._replace(**changes)


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out guarded (each wrapped once)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler]):
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        cached = self._wrapped.get(handler_call_details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler))
            self._wrapped[handler_call_details.method] = cached
        return cached[1]


class _GuardingRegistrar:
    """Stands in for the server while a generated ``add_*Servicer_to_server`` registers a
    service, guarding each method handler as it goes in (see :meth:`ShutdownGate.register`)."""

    def __init__(self, server: grpc.aio.Server, wrap: Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler]):
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGenericHandler(h, self._wrap) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, {name: self._wrap(h) for name, h in handlers.items()})


def server_interceptors(config: Any) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server with ``config`` (a ``ServerConfig``) runs: the token check
    when ``auth_token_file`` is set, else none. (The shutdown gate and the unparsable-request
    guard wrap the handlers once, at registration, through :meth:`ShutdownGate.register`: an
    interceptor would cost a coroutine on every call.) Refused calls are never parsed: the
    token check hands back a handler without a deserializer."""
    if config.auth_token_file is not None:
        return [BearerTokenInterceptor(load_tokens(config.auth_token_file))]
    return []


def server_port_credentials(config: Any) -> grpc.ServerCredentials | None:
    """TLS credentials for ``config``'s port, or None for plaintext; ``ValueError`` for an
    incomplete combination (a cert without its key, a client CA without TLS)."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    return server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)


# -- client side ---------------------------------------------------------------------------


class _BearerSync(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def _aio_bearer_interceptors(token: str) -> list[Any]:
    """``grpc.aio`` client interceptors adding the bearer token to every kind of call."""
    metadata = bearer_metadata(token)

    def details(call_details: Any) -> Any:
        return call_details._replace(metadata=grpc.aio.Metadata(*(call_details.metadata or ()), *metadata))

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
            return await continuation(details(client_call_details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
            return await continuation(details(client_call_details), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


def open_channel(
    target: str,
    options: Sequence[tuple[str, Any]] = (),
    *,
    aio: bool = False,
    tls: bool = False,
    ca: str | Path | bytes | None = None,
    cert: str | Path | bytes | None = None,
    key: str | Path | bytes | None = None,
    token: str | None = None,
) -> Any:
    """A channel to ``target``: TLS when ``tls`` or any of ``ca``/``cert``/``key`` is given
    (``ca`` verifies the server, ``cert``/``key`` are the client's for mutual TLS), with a
    bearer ``token`` on every call when given; ``aio`` picks a ``grpc.aio`` channel."""
    options = list(options)
    secure = tls or ca is not None or cert is not None or key is not None
    credentials = channel_credentials(ca, cert, key) if secure else None
    if aio:
        interceptors = _aio_bearer_interceptors(token) if token is not None else None
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    return grpc.intercept_channel(channel, _BearerSync(token)) if token is not None else channel


# -- shutdown ------------------------------------------------------------------------------


class ShutdownGate:
    """Answers UNAVAILABLE to calls the server starts handling after :meth:`close`, and
    INVALID_ARGUMENT (not grpc's UNKNOWN) to unary requests whose bytes do not parse (corrupt
    wire format, invalid UTF-8 in a string field): bad input must never look like a server
    fault. Services are registered through :meth:`register`, which wraps each method handler
    once.

    grpc cancels (CANCELLED, which clients do not retry) the calls it has received but the
    application has not picked up yet when ``server.stop()`` begins; under load that is a
    backlog of calls sent before SIGTERM. So the server first closes this gate, lets the
    backlog be picked up and answered UNAVAILABLE (retryable: the client goes elsewhere), and
    only then stops: calls already being handled finish within the grace period, every other
    one gets UNAVAILABLE. Health and reflection stay open (health says NOT_SERVING by then).
    """

    def __init__(self) -> None:
        self.closed = False
        self._last_call = 0.0

    def register(self, add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server,
                 always_open: bool = False) -> None:
        """``add_to_server(servicer, server)`` (a generated ``add_*Servicer_to_server``), with
        every handler guarded; ``always_open`` services (health) stay open after :meth:`close`."""
        add_to_server(servicer, _GuardingRegistrar(server, lambda handler: _guard(handler, self, always_open)))

    def close(self) -> None:
        """From now on, new calls get UNAVAILABLE."""
        self.closed = True

    def note_call(self) -> None:
        """A call arrived after :meth:`close` (:meth:`drain` waits for these to stop)."""
        self._last_call = time.monotonic()

    async def drain(self, quiet_s: float = 0.3, limit_s: float = 2.0) -> None:
        """Wait until no call has arrived for ``quiet_s`` (the backlog is answered), at most
        ``limit_s`` (clients may keep sending)."""
        started = time.monotonic()
        self._last_call = max(self._last_call, started)
        while time.monotonic() - started < limit_s:
            quiet_for = time.monotonic() - self._last_call
            if quiet_for >= quiet_s:
                return
            await asyncio.sleep(quiet_s - quiet_for)
