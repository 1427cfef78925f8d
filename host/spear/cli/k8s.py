"""`spear k8s manifest`: print the Deployment and headless Service that run one function.

    spear k8s manifest --function echo --image registry.example/echo:1 --replicas 3 \\
        | kubectl apply -f -

The pods read their token from the Secret `<function>-token` (key `token`); create it first
(`--with-secret` prints one with a fresh random token). See docs/kubernetes.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from spear.runtime.manifests import FunctionDeployment, manifests, to_json, to_yaml


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "k8s", help="Kubernetes helpers (manifests)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="k8s_command", required=True)
    manifest = commands.add_parser(
        "manifest", help="print a Deployment and a headless Service for a function",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    manifest.add_argument("--function", required=True, help="function name (a DNS label)")
    manifest.add_argument("--image", required=True, help="container image with spear installed")
    manifest.add_argument("--replicas", type=int, default=1)
    manifest.add_argument("--namespace", default="default")
    target = manifest.add_mutually_exclusive_group()
    target.add_argument("--handler", metavar="MODULE:FUNCTION", help="serve a Python handler")
    target.add_argument("--wasm", metavar="PATH",
                        help="serve this module (path in the image; default /app/FUNCTION.wasm)")
    manifest.add_argument("--grpc-port", type=int, default=50051)
    manifest.add_argument("--tcp-port", type=int, default=50052,
                          help="TCP fallback port (0: no TCP fallback)")
    manifest.add_argument("--secret", help="Secret holding the token (default FUNCTION-token)")
    manifest.add_argument("--with-secret", action="store_true",
                          help="also print that Secret, with a fresh random token")
    manifest.add_argument("--tls-secret", metavar="NAME",
                          help="kubernetes.io/tls Secret (tls.crt, tls.key): serve over TLS")
    manifest.add_argument("--mtls", action="store_true",
                          help="require client certificates signed by ca.crt in --tls-secret")
    manifest.add_argument("--health-port", type=int, default=50053,
                          help="plaintext health port used for probes with TLS (default 50053)")
    manifest.add_argument("--cpu", default="500m", help="CPU limit (and request)")
    manifest.add_argument("--memory", default="256Mi", help="memory limit (and request)")
    manifest.add_argument("--cpu-request", help="CPU request when lower than the limit")
    manifest.add_argument("--memory-request", help="memory request when lower than the limit")
    manifest.add_argument("--drain-seconds", type=int, default=25,
                          help="how long a stopping pod finishes requests in flight")
    manifest.add_argument("--format", choices=["yaml", "json"], default="yaml")
    manifest.set_defaults(func=run_manifest)


def run_manifest(args: argparse.Namespace) -> int:
    spec = FunctionDeployment(
        function=args.function, image=args.image, replicas=args.replicas,
        namespace=args.namespace, handler=args.handler, wasm=args.wasm,
        grpc_port=args.grpc_port, tcp_port=args.tcp_port or None,
        health_port=args.health_port, secret=args.secret, tls_secret=args.tls_secret,
        mutual_tls=args.mtls, cpu=args.cpu, memory=args.memory,
        cpu_request=args.cpu_request, memory_request=args.memory_request,
        drain_seconds=args.drain_seconds,
    )
    documents = manifests(spec, with_secret=args.with_secret)
    sys.stdout.write(to_json(documents) if args.format == "json" else to_yaml(documents))
    return 0
