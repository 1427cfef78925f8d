"""spear guest SDK: write spear ABI v1 WebAssembly functions in C (``spear.h``), Rust (the
``spear`` crate) or Zig (``spear.zig``), and build them with one command.

See ``guest_sdk/README.md`` and ``docs/wasm-abi.md``.
"""

from spear_guest.build import (
    OPT_LEVELS,
    BuildError,
    BuildResult,
    ToolchainMissing,
    build,
    build_all,
    build_cached,
    build_module,
    compile_command,
    compile_flags,
    guest_sources,
    include_dir,
    output_name,
    source_hash,
)
from spear_guest.sdk_files import rust_crate_dir, sdk_path, zig_sdk_file

__all__ = [
    "OPT_LEVELS",
    "BuildError",
    "BuildResult",
    "ToolchainMissing",
    "build",
    "build_all",
    "build_cached",
    "build_module",
    "compile_command",
    "compile_flags",
    "guest_sources",
    "include_dir",
    "output_name",
    "rust_crate_dir",
    "sdk_path",
    "source_hash",
    "zig_sdk_file",
]
