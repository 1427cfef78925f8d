"""`spear serve`'s configuration schema: every error names the key path and what it expected,
nothing is guessed, and a config that cannot work is refused before anything starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spear import FunctionSpec, RuntimeType, Spearlet
from spear.errors import InvalidConfiguration
from spear.invocation.function_spec import Limits
from spear.invocation.serve_config import load_config, parse_config


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(InvalidConfiguration) as error:
        parse_config(data, base_dir=Path("/srv"), source="spear.toml")
    return str(error.value)


def wasm(**extra: Any) -> dict[str, Any]:
    return {"name": "echo", "runtime": "wasm", "artifact": "echo.wasm", **extra}


def test_a_string_where_a_number_belongs_names_the_key_and_the_type() -> None:
    message = refused({"functions": [wasm(min_instances="2")]})
    assert "functions[0] (echo).min_instances" in message
    assert "valid integer" in message and "'2'" in message
    assert "not supported" not in message  # no Python comparison error leaks out


def test_a_string_command_is_refused_not_split_into_characters() -> None:
    message = refused({"functions": [{"name": "p", "runtime": "process",
                                      "command": "python -m spear.worker m:f"}]})
    assert "functions[0] (p).command" in message and "valid list" in message


def test_unknown_keys_are_refused_with_the_closest_known_one() -> None:
    message = refused({"functions": [wasm(max_instancs=3)]})
    assert "functions[0] (echo).max_instancs: unknown key" in message
    assert "did you mean 'max_instances'" in message
    assert "server.htp" in refused({"server": {"htp": "127.0.0.1:1"}})


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0, 0.0, 1e300])
def test_timeouts_must_be_finite_positive_and_bounded(value: float) -> None:
    message = refused({"functions": [wasm(limits={"timeout_s": value})]})
    assert "functions[0] (echo).limits.timeout_s" in message


def test_runtime_specific_keys_and_required_ones() -> None:
    assert "runtime must be one of" in refused({"functions": [wasm(runtime="docker")]})
    assert "artifact: required key is missing" in refused(
        {"functions": [{"name": "w", "runtime": "wasm"}]})
    assert "command: unknown key" in refused({"functions": [wasm(command=["x"])]})
    assert "the name is used twice" in refused({"functions": [wasm(), wasm()]})
    assert "functions[0] (a/b).name" in refused({"functions": [wasm(name="a/b")]})
    assert "server.http" in refused({"server": {"http": "localhost"}})


def test_several_problems_are_all_listed() -> None:
    message = refused({"functions": [wasm(min_instances="1", queue_limit=-1)]})
    assert "min_instances" in message and "queue_limit" in message


def test_a_config_that_serves_nothing_is_refused() -> None:
    config = parse_config({"server": {"http": False, "grpc": "off"}}, base_dir=Path("/"),
                          source="x")
    with pytest.raises(InvalidConfiguration, match="nothing to serve"):
        config.check_serves_something()
    config = parse_config({}, base_dir=Path("/"), source="x").with_addresses("off", "off")
    with pytest.raises(InvalidConfiguration, match="nothing to serve"):
        config.check_serves_something()


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "spear.toml"
    path.write_text('[[functions]]\nname = "echo"\nruntime = "wasm"\n'
                    'artifact = "build/echo.wasm"\nlimits = { timeout_s = 2 }\n')
    config = load_config(path)
    spec = config.functions[0]
    assert spec.artifact == str(tmp_path / "build" / "echo.wasm")
    assert spec.limits.timeout_s == 2.0  # an integer is a fine number of seconds


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spear.toml"
    path.write_text("[server\n")
    with pytest.raises(InvalidConfiguration, match="not valid TOML"):
        load_config(path)


def test_function_specs_refuse_the_same_mistakes_from_python() -> None:
    with pytest.raises(InvalidConfiguration, match="min_instances must be an int"):
        FunctionSpec("echo", RuntimeType.WASM, artifact="e.wasm", min_instances="2")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match="command must be a list"):
        FunctionSpec("p", RuntimeType.PROCESS, command="python -m x")
    for value in (math.inf, math.nan, -1.0):
        with pytest.raises(InvalidConfiguration, match="timeout_s"):
            Limits(timeout_s=value)


async def test_a_wasm_handler_the_module_does_not_export_is_refused_at_deploy(
    wasm_fixture: Callable[[str], Path],
) -> None:
    async with Spearlet() as spearlet:
        with pytest.raises(InvalidConfiguration) as error:
            await spearlet.deploy(FunctionSpec("typo", RuntimeType.WASM,
                                               artifact=str(wasm_fixture("multi")),
                                               handler="uper"))
        assert "no handler 'uper'" in str(error.value) and "upper" in str(error.value)
        assert spearlet.functions() == []
        await spearlet.deploy(FunctionSpec("upper", RuntimeType.WASM,
                                           artifact=str(wasm_fixture("multi"))))
        assert (await spearlet.invoke("upper", b"ok")).output_data == b"OK"
