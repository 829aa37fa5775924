"""Imports deferred until first use.

mergekit imports peft at module level (`mergekit.common`) for one purpose, LoRA parents, which
a recipe cannot name (`recipe_schema` refuses them). peft and the transformers modules it pulls
in cost about 0.7 CPU s of every publisher process's start-up, as much as publisher adds around
the merge. `defer("peft")` puts a stand-in in `sys.modules`: `import peft` binds it, and the
first read of any of its names (`peft.PeftModel`, `from peft import X`) imports the real module
and answers from it, so code that does use peft works unchanged.

`importlib.util.LazyLoader` cannot do this: Python's import statement reads `__spec__` of a
module already in `sys.modules`, and a lazy module loads on any attribute read.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class DeferredModule(types.ModuleType):
    """Stands in for a module until code reads one of its names. Dunder reads (the import
    system's `__spec__`, `inspect`'s `__file__`, pickling) answer from the stand-in and import
    nothing."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def defer(name: str) -> bool:
    """Defer importing the top-level module `name`; False (and nothing done) where it is
    imported already or not installed."""
    if name in sys.modules or "." in name:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a finder that refuses it: then it is not importable
        return False
    if spec is None:
        return False
    module = DeferredModule(name)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    module.__package__ = name
    if spec.submodule_search_locations is not None:
        module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module
    return True


def is_deferred(name: str) -> bool:
    """Whether `name` is still the stand-in (nothing has read its names yet)."""
    return isinstance(sys.modules.get(name), DeferredModule)
