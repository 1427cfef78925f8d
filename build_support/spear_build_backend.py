"""setuptools' build backend, told whether it is building an editable install.

setup.py adds the in-tree guest SDK to the `dev` extra only for an editable install (a
checkout, where `guest_sdk/` is beside it); everything else is setuptools unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the backend's hooks, re-exported)


def _as_editable(hook: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        os.environ["SPEAR_BUILD_EDITABLE"] = "1"
        try:
            return hook(*args, **kwargs)
        finally:
            os.environ.pop("SPEAR_BUILD_EDITABLE", None)

    return run


get_requires_for_build_editable = _as_editable(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_editable = _as_editable(
    _setuptools.prepare_metadata_for_build_editable)
build_editable = _as_editable(_setuptools.build_editable)
