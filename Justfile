# spear-host recipes. `just test` is the README's test command.

python := env_var_or_default("PYTHON", "python")

# run the whole test suite
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# build every guest in wasm_fixtures/ into wasm_fixtures/build/NAME.wasm
fixtures:
    {{python}} -m spear_guest build-all wasm_fixtures -o wasm_fixtures/build

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
