"""A Jinja2 sandbox with bounds, for templates a recipe controls (the model card's).

Jinja's `ImmutableSandboxedEnvironment` stops templates from reaching Python internals or
changing the values they are given, but not from spending unbounded time or memory:
`10 ** (10 ** 8)`, `'x' * 10**10`, nested `range(100000)` loops or a template that includes
itself all run until the machine gives out. `BoundedEnvironment` adds a bound to each way a
template can grow something, and `render` turns every way it can fail into one
`TemplateBoundError`:

- one `range()`: `MAX_RANGE` items; any string, list or output: `MAX_SIZE` items;
- an integer result (`**`, `*`): `MAX_INT_BITS` bits;
- the whole render: `MAX_STEPS` loop iterations, calls and operations, and `MAX_SECONDS`;
- nesting (a template including itself, a recursive macro): Python's recursion limit.

The limits are far above what a model card needs (a 7B model's card takes a few thousand
steps and well under a second).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from jinja2 import Template, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_RANGE = 100_000
MAX_SIZE = 2_000_000
MAX_INT_BITS = 100_000
MAX_STEPS = 1_000_000
MAX_SECONDS = 20.0
# Filters whose integer arguments size their output (`'x'|center(10**9)`).
SIZING_FILTERS = ("center", "indent", "wordwrap", "truncate", "batch", "slice", "replace")
# str methods that do the same (`'x'.ljust(10**9)`).
SIZING_METHODS = ("center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join")
_FORMAT_WIDTH = re.compile(r"\d+")


class TemplateBoundError(SecurityError):
    """A template went past one of the sandbox's bounds; the message says which."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _check_growth(value: Any, args: list[Any], what: str) -> None:
    # replace/join/format can multiply sizes: bound the product before the string is made.
    grows = sum(_size(a) for a in args if isinstance(a, str))
    if isinstance(value, str) and (len(value) + 1) * (grows + 1) > MAX_SIZE * 4:
        raise TemplateBoundError(f"{what} could make a string longer than {MAX_SIZE:,}")


class _Bounder(NodeTransformer):
    """Routes every loop and every `~` through the environment, where they are counted."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 (Jinja's visitor naming)
        self.generic_visit(node)
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Call(
            nodes.EnvironmentAttribute("bounded_concat"), list(node.nodes), [], None, None
        )


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """An immutable sandbox that counts what a render does and refuses what is too big."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals["range"] = self.bounded_range
        for name in SIZING_FILTERS:
            self.filters[name] = self._sized_filter(self.filters[name], name)
        self._steps = 0
        self._deadline = float("inf")

    # -- counting ---------------------------------------------------------------------------

    def _tick(self) -> None:
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise TemplateBoundError(
                f"the template does more than {MAX_STEPS:,} steps (loop iterations, calls, "
                "operations); simplify its loops"
            )
        if not self._steps & 0x3FF and time.monotonic() > self._deadline:
            raise TemplateBoundError(f"the template took more than {MAX_SECONDS:g} s to render")

    def _check_size(self, value: Any, what: str) -> Any:
        if _size(value) > MAX_SIZE:
            raise TemplateBoundError(f"{what} would be longer than {MAX_SIZE:,} items")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise TemplateBoundError(f"{what} would be a number over {MAX_INT_BITS:,} bits")
        return value

    def _check_args(self, args: Iterable[Any], what: str) -> None:
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_SIZE:
                raise TemplateBoundError(f"{what} is given {arg}, over the bound of {MAX_SIZE:,}")

    # -- what templates can call --------------------------------------------------------------

    def bounded_range(self, *args: int) -> range:
        values = range(*args)
        if len(values) > MAX_RANGE:
            raise TemplateBoundError(
                f"range() of {len(values):,} items; the bound is {MAX_RANGE:,}"
            )
        return values

    def bounded_iter(self, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            self._tick()
            yield item

    def bounded_concat(self, *parts: Any) -> str:
        self._tick()
        if sum(_size(p) for p in parts if isinstance(p, str)) > MAX_SIZE:
            raise TemplateBoundError(f"'~' would make a string longer than {MAX_SIZE:,}")
        return self._check_size("".join(str(p) for p in parts), "'~'")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        what = f"'{operator}'"
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if max(abs(left), 2).bit_length() * right > MAX_INT_BITS and abs(left) > 1:
                raise TemplateBoundError(f"{left} ** {right} is over {MAX_INT_BITS:,} bits")
        elif operator == "*":
            counts = [x for x in (left, right) if isinstance(x, int)]
            sized = [x for x in (left, right) if _size(x)]
            if counts and sized and _size(sized[0]) * abs(counts[0]) > MAX_SIZE:
                raise TemplateBoundError(f"{what} would make something longer than {MAX_SIZE:,}")
            if len(counts) == 2 and sum(abs(x).bit_length() for x in counts) > MAX_INT_BITS:
                raise TemplateBoundError(f"{what} would make a number over {MAX_INT_BITS:,} bits")
        elif operator == "+" and _size(left) + _size(right) > MAX_SIZE:
            raise TemplateBoundError(f"{what} would make something longer than {MAX_SIZE:,}")
        elif operator == "%" and isinstance(left, str):
            self._check_args((int(w) for w in _FORMAT_WIDTH.findall(left)), "a '%' format")
            if "*" in left:
                raise TemplateBoundError("'%' formats with a '*' width are not allowed here")
        try:
            result = super().call_binop(context, operator, left, right)
        except OverflowError:
            raise TemplateBoundError(f"{what} overflows") from None
        return self._check_size(result, what)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self._tick()
        # The sandbox hands out str.format wrapped; the method itself is its __wrapped__.
        method = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(method, "__self__", None)
        name = getattr(method, "__name__", "")
        if isinstance(owner, str):
            __self._check_args([*args, *kwargs.values()], f"str.{name}")
            if name in SIZING_METHODS or name in ("format", "format_map"):
                _check_growth(owner, [*args, *kwargs.values()], f"str.{name}")
            if name in ("format", "format_map"):
                __self._check_args((int(w) for w in _FORMAT_WIDTH.findall(owner)), "a format")
        return __self._check_size(super().call(__context, __obj, *args, **kwargs), f"{name}()")

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._tick()
        return super().getitem(obj, argument)

    def _sized_filter(self, func: Any, name: str) -> Any:
        # Filters marked pass_context/pass_environment get that first, then the value.
        value_at = 1 if getattr(func, "jinja_pass_arg", None) else 0

        def bounded(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            what = f"the filter '{name}'"
            rest = [*args[value_at + 1 :], *kwargs.values()]
            self._check_args(rest, what)
            if len(args) > value_at:
                _check_growth(args[value_at], rest, what)
            return self._check_size(func(*args, **kwargs), what)

        bounded.__dict__.update(func.__dict__)  # keeps Jinja's pass_context/pass_environment
        return bounded

    # -- compiling and rendering ----------------------------------------------------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Bounder().visit(super()._parse(source, name, filename))

    def render(self, template: Template, **context: Any) -> str:
        """Render `template`, within the bounds; raise `TemplateBoundError` past any of them."""
        self._steps = 0
        self._deadline = time.monotonic() + MAX_SECONDS
        out: list[str] = []
        size = 0
        try:
            for chunk in template.generate(**context):
                self._tick()
                size += len(chunk)
                if size > MAX_SIZE:
                    raise TemplateBoundError(f"the output would be longer than {MAX_SIZE:,}")
                out.append(chunk)
        except RecursionError:
            raise TemplateBoundError(
                "templates include or call each other too deeply (a template including "
                "itself, or a macro calling itself without end)"
            ) from None
        except (OverflowError, MemoryError) as exc:
            raise TemplateBoundError(f"the template computed something too big ({exc})") from None
        finally:
            self._deadline = float("inf")
        return "".join(out)
