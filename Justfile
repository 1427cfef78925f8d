# spear-host recipes. `just test` is the README's test command.

python := env_var_or_default("PYTHON", "python")

# run the whole test suite
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# build every guest in wasm_fixtures/ (.c, .rs, .zig) into wasm_fixtures/build/; a missing
# Rust toolchain is named and skipped, except with SPEAR_REQUIRE_TOOLCHAINS=1 (CI) where it fails
fixtures:
    {{python}} -m spear_guest build-all wasm_fixtures -o wasm_fixtures/build {{ if env_var_or_default("SPEAR_REQUIRE_TOOLCHAINS", "") == "1" { "" } else { "--skip-unavailable" } }}

# benchmarks against the anchors, one table, same run
bench *ARGS: fixtures
    {{python}} -m bench {{ARGS}}

# ruff and mypy
lint:
    {{python}} -m ruff check host guest_sdk tests bench setup.py build_support
    {{python}} -m mypy

# regenerate gRPC code from the .proto files (the generated code is committed)
proto:
    {{python}} -m spear.transport.grpc.codegen
    {{python}} -m spear.invocation.codegen

# the main job: serve the example WASM functions over HTTP and gRPC (Ctrl-C stops it)
demo: fixtures
    spear serve
