"""spear guest SDK: the C header ``spear.h`` and the build command for spear ABI v1 modules.

See ``guest_sdk/README.md`` and ``docs/wasm-abi.md``.
"""

from spear_guest.build import (
    OPT_LEVELS,
    BuildError,
    build,
    build_all,
    build_cached,
    compile_command,
    compile_flags,
    include_dir,
    source_hash,
)

__all__ = [
    "OPT_LEVELS",
    "BuildError",
    "build",
    "build_all",
    "build_cached",
    "compile_command",
    "compile_flags",
    "include_dir",
    "source_hash",
]
