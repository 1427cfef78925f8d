"""Where the SDK sources live: in the installed package, or in a guest_sdk/ checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["include_dir", "rust_crate_dir", "sdk_path", "zig_sdk_file"]

_PACKAGE = Path(__file__).resolve().parent


def _find(relative: str) -> Path:
    # The wheel carries guest_sdk/rust and guest_sdk/zig inside the package (package-dir
    # mapping in pyproject.toml); an editable install or a checkout has them one level up.
    for base in (_PACKAGE, _PACKAGE.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return _PACKAGE / relative


def include_dir() -> Path:
    """The directory holding ``spear.h`` (pass it as ``-I`` to other toolchains)."""
    return _PACKAGE / "include"


def rust_crate_dir() -> Path:
    """The Rust crate (``Cargo.toml``, ``src/``): use it as a path dependency."""
    return _find("rust")


def zig_sdk_file() -> Path:
    """``spear.zig``: pass it to zig as the module ``spear``."""
    return _find("zig") / "spear.zig"


def sdk_path(language: str) -> Path:
    """The SDK for ``language`` (``c``, ``rust`` or ``zig``)."""
    paths = {"c": include_dir, "rust": rust_crate_dir, "zig": zig_sdk_file}
    try:
        return paths[language]()
    except KeyError:
        raise ValueError(f"unknown language {language!r} (choose from c, rust, zig)") from None
