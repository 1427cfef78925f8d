# The native fast-call helper, a cffi extension built with the package (native/).
from typing import Any

ffi: Any
lib: Any
