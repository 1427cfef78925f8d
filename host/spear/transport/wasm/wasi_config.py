"""`WasiConfig`: what WASI grants a guest, default-deny.

`WasiConfig()` grants what every WASI guest gets: a clock, randomness, `argv` = the module's
name, no environment, no files, empty stdin, stdout discarded, stderr logged (rate-limited).
Each field grants one thing more:

- `env`: environment variables; `args`: arguments after `argv[0]`;
- `preopens`: `{guest_path: host_directory}`, directories the guest may open, read-only unless
  `read_only=False` (the host directory must be an absolute path to an existing directory);
- `stdin`: bytes the guest reads from stdin (a WASI command reads each call's input instead);
- `stdout`, `stderr`: "log" (one record per line under `spear.guest`, naming the instance and
  the function, within the instance's log rate limit) or "discard". A WASI command's stdout is
  always its call's output, and the end of its stderr goes into the error of a failed call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spear.errors import InvalidConfiguration
from spear.transport.wasm.limits import DEFAULT_MAX_MESSAGE

MAX_STRINGS_BYTES = 1 << 20  # env and args together
MAX_PREOPENS = 64
MAX_STDIN = DEFAULT_MAX_MESSAGE
STREAM_MODES = ("log", "discard")


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidConfiguration(f"{what} must not contain NUL: {value!r:.60}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidConfiguration(f"{what} is not valid UTF-8: {value!r:.60}") from None
    return value


def _host_directory(value: Any, guest: str) -> str:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"wasi.preopens[{guest!r}] must be a path, not {type(value).__name__}")
    path = _text(os.fspath(value), f"wasi.preopens[{guest!r}]")
    if not os.path.isabs(path):
        raise InvalidConfiguration(
            f"wasi.preopens[{guest!r}]: host path {path!r} is relative; give an absolute path")
    if not os.path.exists(path):
        raise InvalidConfiguration(
            f"wasi.preopens[{guest!r}]: host directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise InvalidConfiguration(
            f"wasi.preopens[{guest!r}]: host path {path!r} is not a directory")
    return str(Path(path))


@dataclass(frozen=True)
class WasiConfig:
    env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()
    preopens: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)
    read_only: bool = True
    stdin: bytes | None = None
    stdout: Literal["log", "discard"] = "discard"
    stderr: Literal["log", "discard"] = "log"

    def __post_init__(self) -> None:
        if not isinstance(self.env, Mapping):
            raise TypeError(f"wasi.env must be a mapping, not {type(self.env).__name__}")
        env = {}
        for key, value in self.env.items():
            _text(key, "wasi.env key")
            if not key or "=" in key:
                raise InvalidConfiguration(
                    f"wasi.env: a name must be non-empty and without '=': {key!r:.60}")
            env[key] = _text(value, f"wasi.env[{key!r}]")
        if isinstance(self.args, str | bytes) or not isinstance(self.args, Sequence):
            raise TypeError("wasi.args must be a sequence of str (one per argument)")
        args = tuple(_text(arg, "wasi.args item") for arg in self.args)
        size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
        size += sum(len(arg.encode()) + 1 for arg in args)
        if size > MAX_STRINGS_BYTES:
            raise InvalidConfiguration(
                f"wasi.env and wasi.args hold {size} bytes, more than {MAX_STRINGS_BYTES}")
        if not isinstance(self.preopens, Mapping):
            raise TypeError(f"wasi.preopens must be a mapping of guest paths to host "
                            f"directories, not {type(self.preopens).__name__}")
        if len(self.preopens) > MAX_PREOPENS:
            raise InvalidConfiguration(f"wasi.preopens: at most {MAX_PREOPENS} directories")
        preopens = {}
        for guest, host in self.preopens.items():
            _text(guest, "wasi.preopens guest path")
            if not guest:
                raise InvalidConfiguration("wasi.preopens: a guest path must not be empty")
            preopens[guest] = _host_directory(host, guest)
        if type(self.read_only) is not bool:
            raise TypeError("wasi.read_only must be a bool")
        stdin = self.stdin
        if stdin is not None:
            if not isinstance(stdin, bytes | bytearray | memoryview):
                raise TypeError(f"wasi.stdin must be bytes, not {type(stdin).__name__}")
            stdin = bytes(stdin)
            if len(stdin) > MAX_STDIN:
                raise InvalidConfiguration(
                    f"wasi.stdin holds {len(stdin)} bytes, more than {MAX_STDIN}")
        for name in ("stdout", "stderr"):
            if getattr(self, name) not in STREAM_MODES:
                raise InvalidConfiguration(
                    f"wasi.{name} must be 'log' or 'discard', got {getattr(self, name)!r}")
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "preopens", preopens)
        object.__setattr__(self, "stdin", stdin)
