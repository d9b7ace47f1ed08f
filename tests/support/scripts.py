"""The project's generator scripts (scripts/*.py), loaded as modules, so a test can
compare what a script would write with what is on disk."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .proxy import REPO

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["load_script"]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
