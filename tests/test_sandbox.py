"""Card templates are recipe-controlled: every way to spend time or memory ends in one clear error."""

from __future__ import annotations

import time

import pytest
from jinja2 import DictLoader

from publisher.card import _environment
from publisher.cli import main
from publisher.sandbox import BoundedEnvironment, TemplateBoundError

HOSTILE = {
    "power": ("{{ 10 ** (10 ** 8) }}", "bits"),
    "nested loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "steps",
    ),
    "stored range in nested loops": (
        "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
        "steps",
    ),
    "string repeat": ("{{ 'x' * 10**10 }}", "longer than"),
    "huge range": ("{{ range(10**9) | length }}", "range\\(\\) of 1,000,000,000 items"),
    "self include": ("{% include 'main' %}", "too deeply"),
    "recursive macro": ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "too deeply"),
    "doubling concat": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "longer than",
    ),
    "filter width": ("{{ 'x' | center(10**9) }}", "center"),
    "str method width": ("{{ 'x'.ljust(10**9) }}", "ljust"),
    "replace growth": ("{{ ('x' * 10**6).replace('', 'y' * 10**5) }}", "replace"),
    "format width": ("{{ '{:>999999999}'.format(1) }}", "format"),
    "percent width": ("{{ '%0999999999d' % 1 }}", "format"),
    "float overflow": ("{{ 2.0 ** 100000 }}", "overflows"),
    "big output": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "output"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_ends_in_one_bound_error(name):
    source, message = HOSTILE[name]
    env = BoundedEnvironment(loader=DictLoader({"main": source}))
    started = time.monotonic()
    with pytest.raises(TemplateBoundError, match=message):
        env.render(env.get_template("main"))
    assert time.monotonic() - started < 15


def test_the_card_renders_in_the_bounded_immutable_sandbox(tmp_path):
    env = _environment(tmp_path)
    assert isinstance(env, BoundedEnvironment)
    # Immutable: a template cannot change the lists it is given.
    template = env.from_string("{{ items.append(3) }}")
    with pytest.raises(Exception, match="unsafe|not safely callable|access"):
        env.render(template, items=[1, 2])
    # Ordinary templates are unaffected.
    ok = env.from_string("{% for i in range(3) %}{{ i ~ '-' }}{% endfor %}{{ 2 ** 10 }}")
    assert env.render(ok) == "0-1-2-1024"


def test_hostile_card_template_is_one_error_line(write_recipe, tmp_path, capsys):
    recipe = write_recipe("""\
        models:
          - model: {base}
          - model: {other}
        merge_method: slerp
        base_model: {base}
        parameters:
          t: 0.5
        """)
    templates = tmp_path / "hostile"
    templates.mkdir()
    (templates / "modelcard.md.j2").write_text("---\n{{ card_data }}\n---\n{{ 10 ** (10 ** 8) }}\n")
    code = main(
        ["card", str(recipe), "--out", str(tmp_path / "out"), "--templates", str(templates)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and "bits" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "README.md").exists()
