"""`spear invoke`: call a function on a running `spear serve`.

    spear invoke echo --input hello                          # gRPC on 127.0.0.1:50051
    spear invoke echo --input hello --server 10.0.0.5:50051
    spear invoke echo --input-file photo.jpg --server http://127.0.0.1:8080
    echo hi | spear invoke echo --input-file -

The function's output is written to stdout as raw bytes. A function that fails prints its
error on stderr and exits 1; a call that could not be made (unknown function, busy, timed
out, unreachable server, refused token) exits 2, whichever side noticed it first.

With auth on the server, pass the token with `--token-file PATH` or `$SPEAR_INVOKE_TOKEN`;
with TLS, use `https://` (HTTP) or `--tls` (gRPC), and `--ca-file` for a private CA.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_SERVER = "127.0.0.1:50051"
TOKEN_ENV = "SPEAR_INVOKE_TOKEN"
FUNCTION_FAILED = 1
CALL_FAILED = 2
# How much longer than the request's own timeout the client waits: the server answers a
# timeout itself, so the client's own deadline is only for a server that never answers.
CLIENT_MARGIN_S = 5.0


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "invoke", help="call a function on a running `spear serve`", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="the function's name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="TEXT", help="the input, as UTF-8 text")
    source.add_argument("--input-file", metavar="PATH",
                        help="read the input from a file ('-': stdin)")
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="ADDR",
                        help=f"HOST:PORT for gRPC (default {DEFAULT_SERVER}) or http://HOST:PORT")
    parser.add_argument("--timeout", type=_timeout, metavar="SECONDS", help="per-call timeout")
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"bearer token for the server (default: ${TOKEN_ENV})")
    parser.add_argument("--tls", action="store_true", help="gRPC over TLS")
    parser.add_argument("--ca-file", metavar="PEM", help="CA that signed the server's certificate")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="request metadata (repeatable)")
    parser.set_defaults(func=run)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400], got {text!r}")
    return value


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        with open(args.token_file) as handle:
            return handle.readline().strip() or None
    return os.environ.get(TOKEN_ENV) or None


def run(args: argparse.Namespace) -> int:
    if args.input_file == "-":
        data = sys.stdin.buffer.read()
    elif args.input_file:
        with open(args.input_file, "rb") as handle:
            data = handle.read()
    else:
        data = (args.input or "").encode()
    metadata: dict[str, str] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"spear invoke: --meta needs KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        metadata[key] = value
    if args.server.startswith(("http://", "https://")):
        return _over_http(args, data, metadata)
    return _over_grpc(args, data, metadata)


def _emit(output: bytes) -> None:
    sys.stdout.buffer.write(output)
    if sys.stdout.isatty() and not output.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def _over_grpc(args: argparse.Namespace, data: bytes, metadata: dict[str, str]) -> int:
    import grpc

    from spear.invocation.generated import function_service_pb2 as pb
    from spear.invocation.generated import function_service_pb2_grpc as pb_grpc

    token = _token(args)
    call_metadata = [("authorization", f"Bearer {token}")] if token else None
    if args.tls or args.ca_file:
        root = None
        if args.ca_file:
            with open(args.ca_file, "rb") as handle:
                root = handle.read()
        channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root))
    else:
        channel = grpc.insecure_channel(args.server)
    with channel:
        stub = pb_grpc.FunctionServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.InvokeRequest(function=args.name, input=data,
                                   timeout_s=args.timeout or 0.0, metadata=metadata)
        try:
            reply = stub.Invoke(
                request, metadata=call_metadata,
                timeout=(args.timeout + CLIENT_MARGIN_S) if args.timeout else None)
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"spear invoke: {code.name}: {exc.details()}", file=sys.stderr)
            return CALL_FAILED
    if reply.status != pb.InvokeResponse.SUCCESS:
        status = pb.InvokeResponse.Status.Name(reply.status)
        if reply.status == pb.InvokeResponse.TIMEOUT:  # older servers answered timeouts so
            print(f"spear invoke: DEADLINE_EXCEEDED: {reply.error_message}", file=sys.stderr)
            return CALL_FAILED
        print(f"spear invoke: {args.name} failed ({status}, code {reply.error_code}): "
              f"{reply.error_message}", file=sys.stderr)
        return FUNCTION_FAILED
    _emit(reply.output)
    return 0


def _over_http(args: argparse.Namespace, data: bytes, metadata: dict[str, str]) -> int:
    base = args.server.rstrip("/")
    url = f"{base}/functions/{urllib.parse.quote(args.name, safe='')}/invoke"
    if args.timeout:
        url += f"?timeout={args.timeout!r}"
    headers = {"Content-Type": "application/octet-stream"}
    headers.update({f"X-Spear-Meta-{key}": value for key, value in metadata.items()})
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    context = ssl.create_default_context(cafile=args.ca_file) if base.startswith("https") \
        else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    wait = (args.timeout or 60.0) + CLIENT_MARGIN_S
    try:
        with urllib.request.urlopen(request, timeout=wait, context=context) as response:
            _emit(response.read())
            return 0
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        request_id = exc.headers.get("X-Spear-Request-Id", "")
        print(f"spear invoke: HTTP {exc.code}: {body}"
              + (f" (request {request_id})" if request_id else ""), file=sys.stderr)
        return FUNCTION_FAILED if exc.code == 500 else CALL_FAILED
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError | socket.timeout):
            print(f"spear invoke: no answer from {base} within {wait:g} s", file=sys.stderr)
        else:
            print(f"spear invoke: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return CALL_FAILED
    except TimeoutError:
        print(f"spear invoke: no answer from {base} within {wait:g} s", file=sys.stderr)
        return CALL_FAILED
