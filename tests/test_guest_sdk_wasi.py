"""C guests built against wasi-libc (`spear-guest build --wasi`): libc works beside spear.h,
the module stays small, and it answers through our host and through an independent oracle.

The first --wasi build on a machine compiles wasi-libc (about a minute; zig caches it), so
these tests allow more time than the suite's default.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import spear
import spear_guest
import wasmtime
from guest_oracle import Host, new_engine
from guest_support import wasm_sections
from spear import wasm

pytestmark = pytest.mark.timeout(600)

# A handler as the SDK documents it (guest_sdk/README.md, "C with libc"): malloc, snprintf,
# strlen and stdio next to spear.h's output helpers.
LIBC_GUEST = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "spear.h"

SPEAR_HANDLER(greet) {
    const char *user;
    uint32_t user_len;
    if (!spear_meta_get(req, "user", 4, &user, &user_len)) user = "stranger", user_len = 8;
    char *line = malloc(64 + user_len + req->input_len);
    if (line == NULL) return spear_error(SPEAR_CODE_NOMEM, "malloc failed");
    snprintf(line, 64 + user_len + req->input_len, "hello %.*s, you sent %.*s (%u bytes)",
             (int)user_len, user, (int)req->input_len, (const char *)req->input,
             (unsigned)req->input_len);
    printf("stdout is discarded: %s\n", line);
    int32_t status = spear_output_copy(line, (uint32_t)strlen(line));
    free(line);
    return status;
}

/* Interleaves malloc'd blocks and arena allocations, then checks neither clobbered the other:
 * the SDK must only use pages it grew itself, never malloc's. */
SPEAR_HANDLER(mix) {
    uint32_t n = req->input_len;
    if (n == 0) return spear_error(400, "input must not be empty");
    spear_buf out;
    spear_buf_init(&out, 0);
    unsigned char **blocks = malloc(48 * sizeof *blocks);
    for (int i = 0; i < 48; i++) {
        blocks[i] = malloc(70000);
        if (blocks[i] == NULL) return spear_error(SPEAR_CODE_NOMEM, "malloc failed");
        memset(blocks[i], 'a' + i % 26, 70000);
        spear_buf_append(&out, req->input, n);
        unsigned char *scratch = spear_alloc(50000);
        if (scratch == NULL) return spear_error(SPEAR_CODE_NOMEM, "arena full");
        memset(scratch, 0xEE, 50000);
    }
    for (int i = 0; i < 48; i++) {
        for (int j = 0; j < 70000; j++) {
            if (blocks[i][j] != 'a' + i % 26) return spear_error(1, "a malloc block was clobbered");
        }
        free(blocks[i]);
    }
    free(blocks);
    for (uint32_t i = 0; i < out.len; i++) {
        if (out.data[i] != req->input[i % n]) return spear_error(2, "the arena was clobbered");
    }
    return spear_output_buf(&out);
}

SPEAR_HANDLER(length) {
    char *copy = strndup((const char *)req->input, req->input_len);
    char *digits = spear_alloc(24);
    if (copy == NULL || digits == NULL) return spear_error(SPEAR_CODE_NOMEM, "oom");
    int n = snprintf(digits, 24, "%zu", strlen(copy));
    free(copy);
    return spear_output(digits, (uint32_t)n);
}
"""


@pytest.fixture(scope="module")
def libc_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wasi")
    (d / "libc_guest.c").write_text(LIBC_GUEST)
    return spear_guest.build(d / "libc_guest.c", d / "libc_guest.wasm", wasi=True)


def test_a_libc_guest_is_small_and_stripped(libc_guest: Path) -> None:
    assert libc_guest.stat().st_size < 64 * 1024
    sections = wasm_sections(libc_guest.read_bytes())
    assert "name" in sections and not [s for s in sections if s.startswith(".debug")]
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(libc_guest))
    exports = {e.name for e in module.exports}
    assert {"_initialize", "spear_init", "spear.handler.greet", "spear.handler.mix"} <= exports
    assert "_start" not in exports  # a reactor, not a command


def test_a_libc_guest_answers_through_the_embedding_api(libc_guest: Path) -> None:
    module = wasm.load(libc_guest)
    with module.instantiate() as instance:
        assert instance.call("greet", b"abc", metadata={"user": "ann"}) == (
            b"hello ann, you sent abc (3 bytes)"
        )
        assert instance.call("greet", b"") == b"hello stranger, you sent  (0 bytes)"
        for n in (1, 100, 5000, 70000):
            text = bytes(65 + i % 26 for i in range(n))
            assert instance.call("length", text) == str(n).encode()
        for _ in range(5):  # repeated calls reuse the arena's pages: memory stays bounded
            assert instance.call("mix", b"xyz") == b"xyz" * 48
        with pytest.raises(spear.ExecutionFailed) as exc:
            instance.call("mix", b"")
        assert exc.value.code == "400"


def test_a_libc_guest_answers_through_the_oracle_host(libc_guest: Path) -> None:
    h = Host(new_engine(), libc_guest)
    assert h.uses_wasi
    assert h.call("greet", b"q", [("user", "bo")]) == (0, b"hello bo, you sent q (1 bytes)", 0)
    sizes = []
    for k in range(8):
        payload = bytes([97 + k]) * (1000 * (k % 3 + 1))
        assert h.call("mix", payload) == (0, payload * 48, 0)
        sizes.append(h.mem_size())
    assert sizes[-1] == sizes[-4]  # no growth once the working set is reached
    # a request larger than the buffer: the host grows it with spear_reserve
    big = bytes(i % 256 for i in range(3 * 1024 * 1024))
    assert h.call("length", big.replace(b"\0", b"1")) == (0, str(len(big)).encode(), 0)


async def test_a_libc_guest_answers_through_the_wasm_runtime(libc_guest: Path) -> None:
    async with spear.WasmRuntime() as runtime:
        instance = await runtime.start_instance("libc-guest", artifact=libc_guest)
        response = await instance.channel.request_response(
            spear.ExecutionRequest("r1", "greet", b"hi", metadata={"user": "kim"}), timeout=30
        )
        assert response.status == spear.ExecutionStatus.SUCCESS
        assert response.output_data == b"hello kim, you sent hi (2 bytes)"
        mixed = await asyncio.wait_for(instance.channel.request_response(
            spear.ExecutionRequest("r2", "mix", b"ab"), timeout=30), 60)
        assert mixed.output_data == b"ab" * 48


def test_the_cli_builds_with_wasi_and_says_so(tmp_path: Path, libc_guest: Path) -> None:
    src = tmp_path / "g.c"
    src.write_text(LIBC_GUEST)
    out = tmp_path / "g.wasm"
    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "build", str(src), "-o", str(out), "--wasi"],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"built {out} (")
    with wasm.load(out).instantiate() as instance:
        assert instance.call("length", b"12345") == b"5"


def test_wasi_debug_builds_keep_their_debug_sections(tmp_path: Path, libc_guest: Path) -> None:
    src = tmp_path / "g.c"
    src.write_text(LIBC_GUEST)
    debug = spear_guest.build(src, tmp_path / "g.wasm", wasi=True, debug=True)
    assert ".debug_info" in wasm_sections(debug.read_bytes())
    assert debug.stat().st_size > libc_guest.stat().st_size


def test_a_slow_wasi_build_says_why(
    tmp_path: Path, libc_guest: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear_guest import runner

    monkeypatch.setattr(runner, "PROGRESS_AFTER_S", 0.01)
    src = tmp_path / "g.c"
    src.write_text(LIBC_GUEST)
    with caplog.at_level(logging.INFO, logger="spear_guest"):
        spear_guest.build(src, tmp_path / "g.wasm", wasi=True)
    first = next(r.getMessage() for r in caplog.records if "still running" in r.getMessage())
    assert "wasi-libc" in first and "about a minute" in first
