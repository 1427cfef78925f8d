"""`spear invoke`: call a function on a running `spear serve`.

    spear invoke echo --input hello                          # gRPC on 127.0.0.1:50051
    spear invoke echo --input hello --server 10.0.0.5:50051
    spear invoke echo --input-file photo.jpg --server http://127.0.0.1:8080
    echo hi | spear invoke echo --input-file -

The function's output is written to stdout as raw bytes. A function that fails prints its
error on stderr and exits 1; a call that could not be made (unknown function, busy, timed
out, unreachable server) exits 2.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_SERVER = "127.0.0.1:50051"


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
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="per-call timeout")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="request metadata (repeatable)")
    parser.set_defaults(func=run)


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

    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.FunctionServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.InvokeRequest(function=args.name, input=data,
                                   timeout_s=args.timeout or 0.0, metadata=metadata)
        try:
            reply = stub.Invoke(request, timeout=(args.timeout + 5) if args.timeout else None)
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"spear invoke: {code.name}: {exc.details()}", file=sys.stderr)
            return 2
    if reply.status != pb.InvokeResponse.SUCCESS:
        status = pb.InvokeResponse.Status.Name(reply.status)
        print(f"spear invoke: {args.name} failed ({status}, code {reply.error_code}): "
              f"{reply.error_message}", file=sys.stderr)
        return 1
    _emit(reply.output)
    return 0


def _over_http(args: argparse.Namespace, data: bytes, metadata: dict[str, str]) -> int:
    base = args.server.rstrip("/")
    url = f"{base}/functions/{urllib.parse.quote(args.name, safe='')}/invoke"
    if args.timeout:
        url += f"?timeout={args.timeout}"
    headers = {"Content-Type": "application/octet-stream"}
    headers.update({f"X-Spear-Meta-{key}": value for key, value in metadata.items()})
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=(args.timeout or 60) + 5) as response:
            _emit(response.read())
            return 0
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        code = exc.headers.get("X-Spear-Error-Code")
        print(f"spear invoke: HTTP {exc.code}: {body}", file=sys.stderr)
        return 1 if exc.code == 500 and code else 2
    except urllib.error.URLError as exc:
        print(f"spear invoke: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return 2
