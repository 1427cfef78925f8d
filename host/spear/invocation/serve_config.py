"""`spear serve`'s configuration: a TOML file checked against a schema (pydantic v2), or the
embedded demo.

Nothing is guessed: unknown keys are refused (with the closest known key), types are strict
(`min_instances = "2"` is an error, not a string compared with a number; a string `command`
is refused rather than split into characters), and every error names the key path and what
it expected. Relative paths (artifacts, cwd, token and TLS files) are relative to the config
file's directory. Format: docs/serve.md.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeType
from spear.invocation.function_spec import FunctionSpec, Limits, ServiceRef
from spear.invocation.request_limits import MAX_TIMEOUT_S

DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_GRPC = "127.0.0.1:50051"

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- [server] ---------------------------------------------------------------------------------


class ServerTls(_Strict):
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # clients must present a certificate signed by it


class ServerAuth(_Strict):
    token_file: str | None = None  # one token per line
    token_env: str | None = None  # comma-separated tokens
    protect_metrics: bool = False


class ServerSection(_Strict):
    http: str | Literal[False] = DEFAULT_HTTP
    grpc: str | Literal[False] = DEFAULT_GRPC
    namespace: str | None = None
    scale_interval_s: Seconds = 0.5
    result_ttl_s: Seconds = 300.0
    max_results: PositiveInt = 10_000
    max_body_bytes: PositiveInt = 64 * 1024 * 1024
    max_buffered_bytes: PositiveInt = 256 * 1024 * 1024
    max_connections: PositiveInt = 1024
    max_concurrent_rpcs: PositiveInt = 1024
    head_timeout_s: Seconds = 10.0
    body_timeout_s: Seconds = 30.0
    keep_alive_s: Annotated[int, Field(gt=0, le=3600)] = 5
    drain_s: Annotated[float, Field(ge=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)] = 10.0
    tls: ServerTls | None = None
    auth: ServerAuth | None = None

    @field_validator("http", "grpc")
    @classmethod
    def _address(cls, value: str | Literal[False]) -> str | Literal[False]:
        if value is False or value in ("", "off"):
            return False
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected HOST:PORT (or false to turn it off), got {value!r}")
        return value


# -- [[functions]] ----------------------------------------------------------------------------


class LimitsSection(_Strict):
    timeout_s: Seconds = 30.0
    max_input_bytes: PositiveInt | None = None
    max_message_size: PositiveInt | None = None
    memory_bytes: PositiveInt | None = None
    fuel: PositiveInt | None = None
    loop_budget_ms: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] | None = None


class _FunctionBase(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
    min_instances: NonNegativeInt = 1
    max_instances: PositiveInt = 4
    concurrency_per_instance: PositiveInt | None = None
    balancing: Literal["round_robin", "weighted", "least_outstanding"] = "round_robin"
    weights: list[PositiveInt] = []
    queue_limit: NonNegativeInt = 1024
    idempotent: bool = False
    scale_in_after_s: Seconds = 30.0
    limits: LimitsSection = LimitsSection()


class WasiSection(_Strict):
    """What WASI grants a WASM function (default: nothing beyond clock, randomness, output)."""

    env: dict[str, str] = {}
    args: list[str] = []
    preopens: dict[str, str] = {}  # guest path -> host directory (relative: to the file)
    read_only: bool = True
    stdout: Literal["log", "discard"] = "discard"
    stderr: Literal["log", "discard"] = "log"


class WasmFunction(_FunctionBase):
    runtime: Literal["wasm"]
    artifact: str
    handler: Annotated[str, Field(min_length=1)] | None = None
    dispatch: Literal["auto", "inline", "thread"] = "auto"
    config: dict[str, str] = {}  # what the guest reads with spear.config_get
    wasi: WasiSection | None = None


class ProcessFunction(_FunctionBase):
    runtime: Literal["process"]
    command: Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = {}
    cwd: str | None = None


class PodTls(_Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ServiceSection(_Strict):
    """A headless Service whose ready pods serve the function."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)]
    namespace: Annotated[str, Field(min_length=1, max_length=63)] = "default"
    cluster_domain: str = "cluster.local"
    dns_name: str | None = None  # overrides NAME.NAMESPACE.svc.CLUSTER_DOMAIN
    port: Annotated[int, Field(gt=0, le=65535)] = 50051
    tcp_port: Annotated[int, Field(gt=0, le=65535)] | None = None
    interval_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 5.0

    def resolved_name(self) -> str:
        return self.dns_name or f"{self.name}.{self.namespace}.svc.{self.cluster_domain}"


class KubernetesFunction(_FunctionBase):
    runtime: Literal["kubernetes"]
    endpoints: Annotated[list[str], Field(min_length=1)] | None = None
    service: ServiceSection | None = None
    tcp_ports: list[Annotated[int, Field(gt=0, le=65535)]] = []
    token_file: str | None = None
    token_env: str | None = None
    tls: PodTls | None = None


FunctionEntry = Annotated[WasmFunction | ProcessFunction | KubernetesFunction,
                          Field(discriminator="runtime")]


class ConfigFile(_Strict):
    server: ServerSection = ServerSection()
    functions: list[FunctionEntry] = []


# -- what the server runs ---------------------------------------------------------------------


@dataclass
class ServeConfig:
    """A validated configuration, with paths resolved and tokens read."""

    server: ServerSection = field(default_factory=ServerSection)
    functions: list[FunctionSpec] = field(default_factory=list)
    source: str = "embedded demo"
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def http(self) -> str | None:
        return self.server.http or None

    @property
    def grpc(self) -> str | None:
        return self.server.grpc or None

    def with_addresses(self, http: str | None, grpc: str | None) -> ServeConfig:
        """Command-line overrides (`--http`, `--grpc`; "off" turns one off), checked like
        the file's values."""
        changes: dict[str, Any] = {}
        if http is not None:
            changes["http"] = http
        if grpc is not None:
            changes["grpc"] = grpc
        return self.with_server(**changes)

    def with_server(self, **changes: Any) -> ServeConfig:
        if not changes:
            return self
        data = self.server.model_dump()
        data.update(changes)
        try:
            server = ServerSection.model_validate(data)
        except ValidationError as exc:
            raise InvalidConfiguration(_describe(exc, "command line", {})) from None
        return ServeConfig(server, self.functions, self.source, self.base_dir)

    def resolve(self, value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.base_dir / path)

    def check_serves_something(self) -> None:
        if self.http is None and self.grpc is None:
            raise InvalidConfiguration(
                "nothing to serve: both HTTP and gRPC are off (turn one on with --http or "
                "--grpc, or in [server])")


def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidConfiguration(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfiguration(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))


def parse_config(data: Mapping[str, Any], *, base_dir: Path, source: str) -> ServeConfig:
    try:
        parsed = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise InvalidConfiguration(_describe(exc, source, data)) from None
    config = ServeConfig(parsed.server, [], source, base_dir)
    names: set[str] = set()
    for index, entry in enumerate(parsed.functions):
        where = f"{source}: functions[{index}] ({entry.name})"
        if entry.name in names:
            raise InvalidConfiguration(f"{where}: the name is used twice")
        names.add(entry.name)
        try:
            config.functions.append(_function_spec(entry, config))
        except InvalidConfiguration as exc:
            raise InvalidConfiguration(f"{where}: {exc}") from None
    return config


def _function_spec(entry: _FunctionBase, config: ServeConfig) -> FunctionSpec:
    common: dict[str, Any] = {
        "min_instances": entry.min_instances, "max_instances": entry.max_instances,
        "concurrency_per_instance": entry.concurrency_per_instance,
        "balancing": entry.balancing, "weights": tuple(entry.weights),
        "queue_limit": entry.queue_limit, "idempotent": entry.idempotent,
        "scale_in_after_s": entry.scale_in_after_s,
        "limits": Limits(**entry.limits.model_dump()),
    }
    if isinstance(entry, WasmFunction):
        return FunctionSpec(entry.name, RuntimeType.WASM,
                            artifact=config.resolve(entry.artifact), handler=entry.handler,
                            dispatch=entry.dispatch, config=entry.config or None,
                            wasi=_wasi_config(entry.wasi, config), **common)
    if isinstance(entry, ProcessFunction):
        return FunctionSpec(entry.name, RuntimeType.PROCESS, command=tuple(entry.command),
                            env=dict(entry.env) or None,
                            cwd=config.resolve(entry.cwd) if entry.cwd else None, **common)
    assert isinstance(entry, KubernetesFunction)
    tls = None
    if entry.tls is not None:
        from spear.transport.tls import TlsConfig

        tls = TlsConfig(**{key: (config.resolve(value) if key.endswith("_file") and value
                                 else value)
                           for key, value in entry.tls.model_dump().items()})
    if (entry.endpoints is None) == (entry.service is None):
        raise InvalidConfiguration("a Kubernetes function needs endpoints or service "
                                   "(one of them)")
    service = None
    if entry.service is not None:
        section = entry.service
        service = ServiceRef(section.resolved_name(), section.port, section.tcp_port,
                             section.interval_s)
        common.update(min_instances=0, max_instances=max(entry.max_instances, 1))
    return FunctionSpec(entry.name, RuntimeType.KUBERNETES,
                        endpoints=tuple(entry.endpoints) if entry.endpoints else None,
                        service=service, tcp_ports=tuple(entry.tcp_ports),
                        token=_pod_token(entry, config), tls=tls, **common)


def _wasi_config(section: WasiSection | None, config: ServeConfig) -> Any:
    if section is None:
        return None
    from spear.transport.wasm.wasi_config import WasiConfig

    return WasiConfig(env=section.env, args=section.args,
                      preopens={guest: config.resolve(host)
                                for guest, host in section.preopens.items()},
                      read_only=section.read_only, stdout=section.stdout, stderr=section.stderr)


def _pod_token(entry: KubernetesFunction, config: ServeConfig) -> str | None:
    """The pods' token, from a file (a mounted Secret) or an environment variable; never
    written in the config itself."""
    if entry.token_file and entry.token_env:
        raise InvalidConfiguration("give token_file or token_env, not both")
    if entry.token_file:
        path = config.resolve(entry.token_file)
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise InvalidConfiguration(
                f"cannot read token_file {path}: {exc.strerror or exc}") from None
    if entry.token_env:
        value = os.environ.get(entry.token_env)
        if not value:
            raise InvalidConfiguration(f"token_env: ${entry.token_env} is not set")
        return value
    return None


# -- error messages ---------------------------------------------------------------------------

_RUNTIMES = {"wasm", "process", "kubernetes"}


def _known_keys() -> set[str]:
    keys: set[str] = set()
    for model in (ConfigFile, ServerSection, ServerTls, ServerAuth, LimitsSection,
                  WasmFunction, WasiSection, ProcessFunction, KubernetesFunction, PodTls,
                  ServiceSection):
        keys.update(model.model_fields)
    return keys


def _describe(exc: ValidationError, source: str, data: Mapping[str, Any]) -> str:
    """One line per problem: the key path, what was expected, what was given."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        # A union member's tag ("wasm") is not part of the user's key path.
        if len(loc) >= 3 and loc[0] == "functions" and loc[2] in _RUNTIMES:
            del loc[2]
        path = _path(loc, data)
        kind = error["type"]
        given = error.get("input")
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            close = difflib.get_close_matches(key, _known_keys(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{path}: unknown key{hint}")
        elif kind == "missing":
            lines.append(f"{path}: required key is missing")
        elif kind == "union_tag_invalid":
            lines.append(f"{path}: runtime must be one of 'wasm', 'process', 'kubernetes', "
                         f"got {_show(given)}")
        elif kind == "union_tag_not_found":
            lines.append(f"{path}: runtime is missing (one of 'wasm', 'process', "
                         "'kubernetes')")
        else:
            message = error["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(given, Mapping) else f" (got {_show(given)})"
            lines.append(f"{path}: {message}{shown}")
    head = f"{source}: invalid configuration"
    return head + ("\n  " + "\n  ".join(lines) if len(lines) > 1 else f": {lines[0]}")


def _path(loc: list[Any], data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = ""
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, Mapping) and isinstance(node.get("name"), str):
                    name = f" ({node['name']})"
            parts.append(f"[{item}]{name}")
        else:
            node = node.get(item) if isinstance(node, Mapping) else None
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _show(value: object) -> str:
    text = repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the embedded demo ------------------------------------------------------------------------

DEMO_MODULES = ("echo", "multi")


def demo_build_dirs() -> list[Path]:
    """Where `just fixtures` puts the prebuilt demo guests: `wasm_fixtures/build` of the
    current directory and of the checkout this package runs from."""
    candidates = [Path.cwd() / "wasm_fixtures" / "build"]
    for parent in Path(__file__).resolve().parents:
        if (parent / "wasm_fixtures").is_dir():
            candidates.append(parent / "wasm_fixtures" / "build")
            break
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def demo_config(build_dirs: list[Path] | None = None) -> ServeConfig:
    """The prebuilt WASM guests of `wasm_fixtures/build` (`just fixtures`): `echo`, `upper`
    and `reverse`. The host never compiles anything; without them this fails in one line."""
    for build in demo_build_dirs() if build_dirs is None else build_dirs:
        if all((build / f"{name}.wasm").is_file() for name in DEMO_MODULES):
            functions = [
                FunctionSpec("echo", RuntimeType.WASM, artifact=str(build / "echo.wasm"),
                             max_instances=4),
                FunctionSpec("upper", RuntimeType.WASM, artifact=str(build / "multi.wasm"),
                             handler="upper"),
                FunctionSpec("reverse", RuntimeType.WASM, artifact=str(build / "multi.wasm"),
                             handler="reverse"),
            ]
            return ServeConfig(functions=functions, source=f"embedded demo ({build})")
    raise InvalidConfiguration(
        "no config given and the demo guests are not built (wasm_fixtures/build/echo.wasm, "
        "multi.wasm): run `just fixtures` in a checkout, or pass --config spear.toml "
        "(see docs/serve.md)")
