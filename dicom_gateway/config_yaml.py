"""Reading the configuration file: YAML in, a clear one-line error out.

PyYAML's loaders keep the last of two equal keys in a mapping; a configuration with a second
``routes:`` would then pass ``check-config`` with the routes of the first silently dropped. The
loader here refuses a repeated key, naming it and both lines. A file that is not UTF-8 text
(binary garbage, another encoding) is refused naming the first bad byte, and a YAML syntax
error is one line with its position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["read_yaml"]


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type stubs here
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line}); "
                    "only one may stay", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


_UniqueKeyLoader.add_constructor(  # every mapping, the top level included
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def read_yaml(path: Path) -> Any:
    """The YAML document at ``path``; :class:`ConfigError` (naming the file) when it cannot be
    read, is not UTF-8, is not YAML, or repeats a key."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(source, "", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line "
                          f"{line} (offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.reader.ReaderError as exc:  # a control character: no line/column mark
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(source, "", f"invalid YAML: line {line}: control character "
                          f"0x{exc.character:02x} not allowed (offset {exc.position})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(source, "", f"invalid YAML: {where}{problem}") from None
