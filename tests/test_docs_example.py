"""The annotated example ``config/gateway.example.yaml`` follows the code: its commented-out
profiles name every option of their method, and every default a comment names is the code's.

A comment names a default as ``(default X)``; ``X`` is a YAML value, ``N/D`` (a fraction) or
another key's path (``gateway.ae_title``). Outside the profiles the check is the parser's own
behaviour: the configuration with ``key: X`` must parse equal to the one without the key. In a
profile, ``X`` (or the value shown, when the comment names none) must be the method's default.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_docs import EXAMPLE, method_options

from dicom_gateway import config as config_module

_ENTRY = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<key>[\w-]+):(?P<value>[^#]*?)\s*"
                    r"(?:#\s?(?P<comment>.*))?$")
_NAMED_DEFAULT = re.compile(r"\(default ([^;:,)]+)")


def uncommented_example() -> str:
    """The example with its commented-out profiles (``  # name:`` under ``profiles:``) made
    live, so that they can be read like the rest."""
    lines, inside = [], False
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if re.match(r"\S", line):
            inside = line.startswith("profiles:")
        lines.append("  " + line[4:] if inside and line.startswith("  # ") else line)
    return "\n".join(lines) + "\n"


def example_entries(text: str) -> Iterator[tuple[str, str, str]]:
    """``(key path, value, comment)`` of every ``key: value  # comment`` line, the path in the
    parser's notation (``partners[0].associations``); comment-only lines are skipped."""
    stack: list[tuple[int, str]] = []
    items: dict[str, int] = {}
    for line in text.splitlines():
        m = _ENTRY.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        if m["dash"]:  # a list item: its keys sit two columns further in
            items[parent] = items.get(parent, -1) + 1
            stack.append((indent, f"{parent}[{items[parent]}]"))
            parent, indent = stack[-1][1], indent + 2
        path = f"{parent}.{m['key']}" if parent else m["key"]
        stack.append((indent, path))
        yield path, m["value"].strip(), m["comment"] or ""


def _value(text: str) -> Any:
    """A YAML value, with ``N/D`` read as the fraction it stands for."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d+)\s*", text)
    return float(found[1]) / float(found[2]) if found else yaml.safe_load(text)


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a == pytest.approx(b) if numbers else a == b


def method_defaults(method: str) -> dict[str, Any]:
    """A method's profile defaults, from its options class (the one place they are kept)."""
    from dicom_gateway.protect import options_class

    return options_class(method).defaults()


def _example_profiles() -> dict[str, Any]:
    return yaml.safe_load(uncommented_example())["profiles"]


def test_the_example_shows_every_option_of_every_method() -> None:
    """A reader copies a commented profile: it must name every option, e.g. ``logo_style``."""
    profiles = _example_profiles()
    shown = {p["method"] for p in profiles.values()}
    assert shown == set(method_options()), f"the example shows methods {sorted(shown)}"
    for name, profile in profiles.items():
        if profile["method"] == "none":
            continue
        keys = set(profile) - {"method", "require_pixel_data", "on_unprotectable"}
        want = method_options()[profile["method"]]
        assert keys == want, (f"example profile {name}: missing {sorted(want - keys)}, "
                              f"unknown {sorted(keys - want)}")


def test_the_example_profiles_show_or_name_the_code_defaults() -> None:
    """Each option of a commented profile either shows its default or names it in its comment
    ``(default X)``, and a named default is the method's."""
    profiles = _example_profiles()
    for path, value, comment in example_entries(uncommented_example()):
        parts = path.split(".")
        if parts[0] != "profiles" or len(parts) != 3 or parts[2] in ("method", "surrogates"):
            continue
        method = profiles[parts[1]]["method"]
        if method == "none":
            continue
        default = method_defaults(method)[parts[2]]
        named = _NAMED_DEFAULT.search(comment)
        if named:
            assert _same(_value(named[1]), default), f"{path}: names default {named[1]}, " \
                f"the code's is {default!r}"
        else:
            assert _same(_value(value), default), f"{path}: shows {value} without naming the " \
                f"default ({default!r}): write '(default {default})' in its comment"


def _at(data: Any, path: str) -> tuple[Any, str | int]:
    """The container of ``path`` in ``data`` and the last key."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, *index = re.split(r"\[(\d+)\]", part)
        steps += [name, *(int(i) for i in index if i)]
    for step in steps[:-1]:
        data = data[step]
    return data, steps[-1]


def test_defaults_named_in_the_example_are_the_parsers() -> None:
    """``key: value  # ... (default X)``: the configuration with ``key: X`` parses equal to
    the one without the key. ``X`` may name another key (``gateway.ae_title``)."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    checked = []
    for path, _, comment in example_entries(EXAMPLE.read_text(encoding="utf-8")):
        named = _NAMED_DEFAULT.search(comment)
        if not named:
            continue
        try:
            holder, key = _at(data, named[1].strip())
            default = holder[key]  # a default that is another key's value
        except (KeyError, IndexError, TypeError):
            default = _value(named[1])
        given, absent = copy.deepcopy(data), copy.deepcopy(data)
        holder, key = _at(given, path)
        holder[key] = default
        holder, key = _at(absent, path)
        del holder[key]
        assert config_module.parse_config(given, "<example>", EXAMPLE.parent) == \
            config_module.parse_config(absent, "<example>", EXAMPLE.parent), \
            f"{path}: the example names default {named[1]}, the parser's differs"
        checked.append(path)
    assert "gateway.listen.port" in checked and "partners[0].calling_ae_title" in checked
