"""`spear serve`'s configuration: a TOML file (docs/serve.md), or the embedded demo.

Every key is checked: a misspelt key is an error naming it, not silently ignored. Relative
paths (artifacts, cwd, token files) are relative to the config file's directory.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeType
from spear.invocation.function_spec import FunctionSpec, Limits

DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_GRPC = "127.0.0.1:50051"

_SERVER_KEYS = {"http", "grpc", "namespace", "scale_interval_s", "result_ttl_s", "max_results",
                "max_body_bytes"}
_FUNCTION_KEYS = {"name", "runtime", "artifact", "command", "endpoints", "min_instances",
                  "max_instances", "concurrency_per_instance", "env", "cwd", "limits",
                  "idempotent", "balancing", "queue_limit", "handler", "weights", "tcp_ports",
                  "scale_in_after_s", "token_file", "token_env", "tls"}
_LIMIT_KEYS = {"timeout_s", "max_input_bytes", "max_message_size", "memory_bytes", "fuel"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "server_name"}


@dataclass
class ServeConfig:
    http: str | None = DEFAULT_HTTP  # None: no HTTP front door
    grpc: str | None = DEFAULT_GRPC  # None: no gRPC front door
    namespace: str | None = None
    scale_interval_s: float = 0.5
    result_ttl_s: float = 300.0
    max_results: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    functions: list[FunctionSpec] = field(default_factory=list)
    source: str = "embedded demo"


def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfiguration(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))


def parse_config(data: Mapping[str, Any], *, base_dir: Path, source: str) -> ServeConfig:
    _only(data, {"server", "functions"}, source)
    server = data.get("server", {})
    if not isinstance(server, Mapping):
        raise InvalidConfiguration(f"{source}: [server] must be a table")
    _only(server, _SERVER_KEYS, f"{source} [server]")
    config = ServeConfig(source=source)
    for key in ("http", "grpc"):
        if key in server:
            value = server[key]
            if value is False or value in ("", "off"):
                setattr(config, key, None)
            elif isinstance(value, str):
                setattr(config, key, value)
            else:
                raise InvalidConfiguration(
                    f"{source} [server] {key} must be HOST:PORT, or false to turn it off")
    if "namespace" in server:
        if not isinstance(server["namespace"], str):
            raise InvalidConfiguration(f"{source} [server] namespace must be a string")
        config.namespace = server["namespace"]
    for key, kind in (("scale_interval_s", float), ("result_ttl_s", float),
                      ("max_results", int), ("max_body_bytes", int)):
        if key in server:
            value = server[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
                    or (kind is int and not isinstance(value, int)):
                raise InvalidConfiguration(
                    f"{source} [server] {key} must be a positive {kind.__name__}, got {value!r}")
            setattr(config, key, value)
    functions = data.get("functions", [])
    if not isinstance(functions, list):
        raise InvalidConfiguration(f"{source}: functions must be an array of tables "
                                   "([[functions]])")
    names: set[str] = set()
    for index, table in enumerate(functions):
        where = f"{source} functions[{index}]"
        if not isinstance(table, Mapping):
            raise InvalidConfiguration(f"{where} must be a table")
        spec = _function(table, base_dir, where)
        if spec.name in names:
            raise InvalidConfiguration(f"{where}: function {spec.name!r} is defined twice")
        names.add(spec.name)
        config.functions.append(spec)
    return config


def _function(table: Mapping[str, Any], base_dir: Path, where: str) -> FunctionSpec:
    _only(table, _FUNCTION_KEYS, where)
    if "name" not in table or "runtime" not in table:
        raise InvalidConfiguration(f"{where} needs name and runtime")
    options = {k: v for k, v in table.items()
               if k not in ("limits", "token_file", "token_env", "tls", "runtime")}
    where = f"{where} ({table['name']!r})"
    try:
        runtime = RuntimeType(table["runtime"])
    except ValueError:
        raise InvalidConfiguration(
            f"{where}: runtime must be one of {[t.value for t in RuntimeType]}") from None
    if "artifact" in options:
        options["artifact"] = str(_resolve(base_dir, options["artifact"]))
    if "cwd" in options:
        options["cwd"] = str(_resolve(base_dir, options["cwd"]))
    for key in ("weights", "tcp_ports", "endpoints", "command"):
        if key in options:
            options[key] = tuple(options[key])
    limits = table.get("limits", {})
    if not isinstance(limits, Mapping):
        raise InvalidConfiguration(f"{where}: limits must be a table")
    _only(limits, _LIMIT_KEYS, f"{where} limits")
    token = _token(table, base_dir, where)
    tls = None
    if "tls" in table:
        _only(table["tls"], _TLS_KEYS, f"{where} tls")
        from spear.transport.tls import TlsConfig

        tls = TlsConfig(**{k: (str(_resolve(base_dir, v)) if k.endswith("_file") else v)
                           for k, v in table["tls"].items()})
    try:
        return FunctionSpec(runtime=runtime, limits=Limits(**limits), token=token, tls=tls,
                            **options)
    except TypeError as exc:
        raise InvalidConfiguration(f"{where}: {exc}") from None
    except InvalidConfiguration as exc:
        raise InvalidConfiguration(f"{where}: {exc}") from None


def _token(table: Mapping[str, Any], base_dir: Path, where: str) -> str | None:
    """The pods' token, from a file (a mounted Secret) or an environment variable; never
    written in the config itself."""
    if "token_file" in table:
        path = _resolve(base_dir, table["token_file"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise InvalidConfiguration(f"{where}: cannot read token_file: {exc}") from None
    if "token_env" in table:
        value = os.environ.get(str(table["token_env"]))
        if not value:
            raise InvalidConfiguration(f"{where}: ${table['token_env']} is not set")
        return value
    return None


def _resolve(base_dir: Path, value: object) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base_dir / path


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InvalidConfiguration(
            f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


# -- the embedded demo ---------------------------------------------------------------------------


def fixtures_dir() -> Path | None:
    """`wasm_fixtures/` of the checkout this package runs from, if there is one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "wasm_fixtures"
        if (candidate / "echo.c").is_file():
            return candidate
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spear" / "serve-demo"


def demo_config() -> ServeConfig:
    """The WASM guests in `wasm_fixtures/`, built (once, cached) with the guest SDK."""
    # The guest SDK ships in the same distribution; imported by name so that type-checking
    # host/spear alone does not need it on the path.
    spear_guest = importlib.import_module("spear_guest")
    source_dir = fixtures_dir()
    if source_dir is None:
        raise InvalidConfiguration(
            "no config given and no wasm_fixtures/ to build the demo from; "
            "run `spear serve --config spear.toml` (see docs/serve.md)")
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    echo = spear_guest.build_cached(source_dir / "echo.c", out)
    multi = spear_guest.build_cached(source_dir / "multi.c", out)
    functions = [
        FunctionSpec("echo", RuntimeType.WASM, artifact=str(echo), max_instances=4),
        FunctionSpec("upper", RuntimeType.WASM, artifact=str(multi), handler="upper"),
        FunctionSpec("reverse", RuntimeType.WASM, artifact=str(multi), handler="reverse"),
    ]
    return ServeConfig(functions=functions, source=f"embedded demo (built into {out})")
