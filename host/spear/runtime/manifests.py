"""Kubernetes manifests for one function: a Deployment of pod workers and a headless Service.

The Service is headless (`clusterIP: None`) because the host balances per pod itself: it
resolves the Service's DNS name to one record per ready pod (`DnsDiscovery`) and keeps one
gRPC stream to each. Probes use Kubernetes' native gRPC probes against the worker's
`grpc.health.v1` service: readiness asks the overall status (NOT_SERVING while draining),
liveness asks `liveness` (SERVING until the process exits). The token comes from a Secret
mounted as a file, never from the manifest itself.

Output is YAML written by a small emitter here (block style, double-quoted strings where
plain scalars would be ambiguous), so the host needs no YAML library at run time; `--format
json` gives a `v1/List` that kubectl accepts just the same.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spear.errors import InvalidConfiguration

TOKEN_DIR = "/var/run/secrets/spear"
TLS_DIR = "/var/run/secrets/spear-tls"
TOKEN_KEY = "token"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class FunctionDeployment:
    function: str
    image: str
    replicas: int = 1
    namespace: str = "default"
    handler: str | None = None  # MODULE:FUNCTION; else `wasm`
    wasm: str | None = None  # path of the module inside the image
    grpc_port: int = 50051
    tcp_port: int | None = 50052  # None: no TCP fallback listener
    health_port: int = 50053  # used only with TLS (kubelet probes cannot speak TLS)
    secret: str | None = None  # defaults to "<function>-token"
    tls_secret: str | None = None  # a kubernetes.io/tls Secret: tls.crt, tls.key (+ ca.crt)
    mutual_tls: bool = False
    cpu: str = "500m"
    memory: str = "256Mi"
    cpu_request: str | None = None
    memory_request: str | None = None
    drain_seconds: int = 25
    image_pull_policy: str = "IfNotPresent"
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.function):
            raise InvalidConfiguration(
                f"function name {self.function!r} must be a DNS label (lowercase letters, "
                "digits and '-', at most 63 characters) to name a Deployment and Service"
            )
        if not _DNS_LABEL.match(self.namespace):
            raise InvalidConfiguration(f"namespace {self.namespace!r} is not a DNS label")
        if self.replicas < 0:
            raise InvalidConfiguration(f"replicas must be >= 0, got {self.replicas}")
        if self.handler is not None and self.wasm is not None:
            raise InvalidConfiguration("give a handler or a wasm module, not both")
        ports = [self.grpc_port, self.tcp_port, self.health_port if self.tls_secret else None]
        used = [p for p in ports if p is not None]
        if len(set(used)) != len(used) or not all(0 < p < 65536 for p in used):
            raise InvalidConfiguration(f"ports must be distinct and in 1..65535, got {used}")
        if self.mutual_tls and not self.tls_secret:
            raise InvalidConfiguration("mutual TLS needs a TLS Secret")

    @property
    def secret_name(self) -> str:
        return self.secret or f"{self.function}-token"

    @property
    def service_dns(self) -> str:
        return f"{self.function}.{self.namespace}.svc.cluster.local"

    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.function, "spear.dev/function": self.function}

    def all_labels(self) -> dict[str, str]:
        return {**self.selector(), "app.kubernetes.io/part-of": "spear",
                "app.kubernetes.io/component": "function-worker", **self.labels}

    def worker_args(self) -> list[str]:
        args = ["worker", "--grpc", f"0.0.0.0:{self.grpc_port}"]
        if self.tcp_port is not None:
            args += ["--tcp", f"0.0.0.0:{self.tcp_port}"]
        args += ["--token-file", f"{TOKEN_DIR}/{TOKEN_KEY}",
                 "--drain-timeout", str(self.drain_seconds)]
        if self.tls_secret:
            args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key",
                     "--health-port", str(self.health_port)]
            if self.mutual_tls:
                args += ["--tls-client-ca", f"{TLS_DIR}/ca.crt"]
        if self.handler is not None:
            args.append(self.handler)
        else:
            args += ["--wasm", self.wasm or f"/app/{self.function}.wasm"]
        return args


def deployment(spec: FunctionDeployment) -> dict[str, Any]:
    probe_port = spec.health_port if spec.tls_secret else spec.grpc_port
    ports: list[dict[str, Any]] = [
        {"name": "grpc", "containerPort": spec.grpc_port, "protocol": "TCP"}]
    if spec.tcp_port is not None:
        ports.append({"name": "tcp", "containerPort": spec.tcp_port, "protocol": "TCP"})
    if spec.tls_secret:
        ports.append({"name": "health", "containerPort": spec.health_port, "protocol": "TCP"})
    mounts: list[dict[str, Any]] = [
        {"name": "spear-token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "spear-token", "secret": {
            "secretName": spec.secret_name, "defaultMode": 0o440,
            "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.tls_secret:
        mounts.append({"name": "spear-tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "spear-tls",
                        "secret": {"secretName": spec.tls_secret, "defaultMode": 0o440}})
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["spear"],
        "args": spec.worker_args(),
        "env": [
            {"name": "SPEAR_CACHE_DIR", "value": "/tmp/spear-cache"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "ports": ports,
        "readinessProbe": {"grpc": {"port": probe_port}, "periodSeconds": 5,
                           "timeoutSeconds": 2, "failureThreshold": 1},
        "livenessProbe": {"grpc": {"port": probe_port, "service": "liveness"},
                          "initialDelaySeconds": 5, "periodSeconds": 10,
                          "timeoutSeconds": 2, "failureThreshold": 3},
        "startupProbe": {"grpc": {"port": probe_port}, "periodSeconds": 1,
                         "failureThreshold": 60},
        "resources": {
            "requests": {"cpu": spec.cpu_request or spec.cpu,
                         "memory": spec.memory_request or spec.memory},
            "limits": {"cpu": spec.cpu, "memory": spec.memory},
        },
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.function, "namespace": spec.namespace,
                     "labels": spec.all_labels()},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": spec.selector()},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": spec.all_labels()},
                "spec": {
                    "terminationGracePeriodSeconds": spec.drain_seconds + 5,
                    "automountServiceAccountToken": False,
                    "securityContext": {"fsGroup": 65532},
                    "containers": [container],
                    "volumes": volumes,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": spec.selector()},
                    }],
                },
            },
        },
    }


def service(spec: FunctionDeployment) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [{"name": "grpc", "port": spec.grpc_port,
                                    "targetPort": "grpc", "appProtocol": "grpc"}]
    if spec.tcp_port is not None:
        ports.append({"name": "tcp", "port": spec.tcp_port, "targetPort": "tcp"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.function, "namespace": spec.namespace,
                     "labels": spec.all_labels()},
        "spec": {
            # Headless: DNS returns one record per ready pod; the host balances per pod.
            "clusterIP": "None",
            "selector": spec.selector(),
            "ports": ports,
        },
    }


def token_secret(spec: FunctionDeployment, token: str | None = None) -> dict[str, Any]:
    """A Secret holding a fresh random token (for a quick start; prefer your secret store)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": spec.secret_name, "namespace": spec.namespace,
                     "labels": spec.all_labels()},
        "stringData": {TOKEN_KEY: token or secrets.token_urlsafe(32)},
    }


def manifests(spec: FunctionDeployment, *, with_secret: bool = False) -> list[dict[str, Any]]:
    docs = [token_secret(spec)] if with_secret else []
    return [*docs, deployment(spec), service(spec)]


# -- output -------------------------------------------------------------------------------------

_PLAIN = re.compile(r"^(--?)?[A-Za-z_/][A-Za-z0-9_./:@-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS and not text.endswith(":"):
        return text
    return json.dumps(text)  # a JSON string is a valid double-quoted YAML scalar


def _emit(value: object, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                out.append(f"{pad}{_scalar(key)}:")
                _emit(item, indent + (0 if isinstance(item, list) else 1), out)
            else:
                out.append(f"{pad}{_scalar(key)}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                lines: list[str] = []
                _emit(item, indent + 1, lines)
                first = lines[0].lstrip()
                out.append(f"{pad}- {first}")
                out.extend(lines[1:])
            elif isinstance(item, list) and item:
                raise ValueError("nested lists are not needed in manifests")
            else:
                out.append(f"{pad}- {_inline(item)}")
    else:
        out.append(f"{pad}{_scalar(value)}")


def _inline(value: object) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    chunks = []
    for document in documents:
        lines: list[str] = []
        _emit(document, 0, lines)
        chunks.append("\n".join(lines))
    return "---\n" + "\n---\n".join(chunks) + "\n"


def to_json(documents: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}, indent=2) + "\n"
