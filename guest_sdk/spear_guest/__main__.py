"""``python -m spear_guest build SRC -o OUT.wasm``."""

from spear_guest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
