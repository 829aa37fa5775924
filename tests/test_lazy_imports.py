"""publisher.lazy_imports: a deferred module imports nothing until code reads its names, then
behaves as the real one; publisher defers peft, which no recipe can need."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from publisher.lazy_imports import defer, is_deferred


@pytest.fixture
def slow_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package that counts how often it is imported in `builtins.SLOW_PKG_IMPORTS`."""
    package = tmp_path / "slow_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import builtins\n"
        "builtins.SLOW_PKG_IMPORTS = getattr(builtins, 'SLOW_PKG_IMPORTS', 0) + 1\n"
        "VALUE = 42\n"
    )
    (package / "sub" / "__init__.py").write_text("NAME = 'sub'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "slow_pkg"
    for name in [n for n in sys.modules if n == "slow_pkg" or n.startswith("slow_pkg.")]:
        del sys.modules[name]
    import builtins

    if hasattr(builtins, "SLOW_PKG_IMPORTS"):
        del builtins.SLOW_PKG_IMPORTS


def imports() -> int:
    import builtins

    return getattr(builtins, "SLOW_PKG_IMPORTS", 0)


def test_a_deferred_module_loads_on_the_first_name_read(slow_package: str) -> None:
    assert defer(slow_package) and is_deferred(slow_package)
    import slow_pkg  # binds the stand-in

    # What the import system, inspect and pickle read does not load it.
    assert slow_pkg.__spec__ is not None and slow_pkg.__name__ == "slow_pkg"
    assert not hasattr(slow_pkg, "__all__")
    code = test_a_deferred_module_loads_on_the_first_name_read.__code__
    inspect.getmodule(code, "/no/such/file.py")  # reads __file__ of every module in sys.modules
    assert imports() == 0
    assert slow_pkg.VALUE == 42  # the first real read
    assert imports() == 1 and not is_deferred(slow_package)
    from slow_pkg import VALUE
    from slow_pkg.sub import NAME

    assert (VALUE, NAME) == (42, "sub") and imports() == 1
    assert not defer(slow_package)  # imported already: nothing to defer


def test_from_import_and_missing_modules(slow_package: str) -> None:
    defer(slow_package)
    from slow_pkg import VALUE  # a name read: loads it

    assert VALUE == 42 and imports() == 1
    assert not defer("no_such_module_publisher_test")
    assert "no_such_module_publisher_test" not in sys.modules


def test_publisher_defers_peft_through_mergekit_and_peft_still_imports() -> None:
    """In a fresh interpreter: mergekit's merge path leaves peft unimported, and peft still
    works for whoever reads it."""
    code = (
        "import publisher, mergekit.merge, mergekit.merge_methods\n"
        "from publisher.lazy_imports import is_deferred\n"
        "assert is_deferred('peft'), 'peft was imported'\n"
        "from peft import LoraConfig\n"
        "assert not is_deferred('peft') and LoraConfig.__module__.startswith('peft')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
