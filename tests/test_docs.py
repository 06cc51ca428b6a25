"""The documentation follows the code: configuration keys, commands, metric names, anchors.

The accepted configuration keys are derived from the parser itself, never from a list kept
here: :func:`config_keys` parses real configurations while recording every key path that
``config._Reader`` consults (``mapping`` names the allowed keys of a section, ``get``/``has``/
``child`` read one), and asks every protection method which profile keys it accepts through
``protect.parse_options``. A static walk of ``config.py`` makes sure no key literal escaped
that parse (a section the test configurations do not reach). ``docs/configuration.md`` must
define each key in a table row whose first cell is the key in backticks, and define no other.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_gateway import config as config_module

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "configuration.md"
OPERATIONS_DOC = DOCS / "operations.md"
EXAMPLE = ROOT / "config" / "gateway.example.yaml"

RUNBOOK = ("Partner down", "Queue growing", "Oldest item too old", "Dead letters",
           "Spool disk nearly full", "Protection failures", "Gateway down", "Requeue",
           "Key rotation", "Upgrading")


# -- configuration keys: derived from the parser -------------------------------------------
def normalize(path: str) -> str:
    """A consulted key path in the documentation's notation: list items ``[]``, user-chosen
    names ``<name>`` (profiles) and ``<tag>`` (route tag matchers)."""
    path = re.sub(r"\[\d+\]", "[]", path)
    path = re.sub(r"^profiles\.[^.]+", "profiles.<name>", path)
    path = re.sub(r"^(gateway\.listen\.tls\.callers)\.[^.]+", r"\1.<ae>", path)
    return re.sub(r"(\.match\.tags)\..+$", r"\1.<tag>", path)


def _full_config(tmp: Path) -> dict[str, Any]:
    """The example configuration plus values for what it leaves commented out (the seal, a
    partner key, ``no_route`` as a mapping, TLS with throwaway certificates), so that every
    section is parsed."""
    from peers_tls import TestCA

    from dicom_gateway.seal.keys import init_gateway_keys, new_partner_key

    init_gateway_keys(tmp / "keys")
    new_partner_key("uni-x", tmp / "keys")
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["seal"] = {"signing_key": str(tmp / "keys" / "gateway-signing.key"),
                    "uid_secret": str(tmp / "keys" / "uid-secret.key"),
                    "gateway_id": "EGRESS_GW", "uid_root": "1.2.826.0.1.3680043.10.1234"}
    data["partners"][0]["key"] = str(tmp / "keys" / "uni-x.pub")
    data["no_route"] = {"partner": "uni-x", "profile": "passthrough"}
    ca = TestCA(tmp / "tls", "hospital")
    gateway = ca.issue("gateway")
    own = {"certificate": str(gateway.cert), "private_key": str(gateway.key)}
    caller = data["gateway"]["allowed_callers"][0]
    data["gateway"]["listen"]["tls"] = {**own, "client_ca": str(ca.cert), "callers": {
        caller: {"subject_cn": "pacs", "sha256": gateway.sha256}}}
    data["partners"][0]["tls"] = {**own, "ca": str(ca.cert), "sha256": [gateway.sha256],
                                  "check_hostname": False, "server_name": "pacs.example"}
    return data


def consulted_keys(configs: list[dict[str, Any]]) -> set[str]:
    """Every key path the parser allows or reads while parsing ``configs``."""
    seen: set[str] = set()
    reader = config_module._Reader
    original = {name: getattr(reader, name) for name in ("mapping", "get", "has", "child")}

    def mapping(self: Any, allowed: Any) -> Any:
        seen.update(self._join(k) for k in allowed)
        return original["mapping"](self, allowed)

    def reading(name: str) -> Any:
        def wrapper(self: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
            seen.add(self._join(key))
            return original[name](self, key, *args, **kwargs)
        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "mapping", mapping)
        for name in ("get", "has", "child"):
            patch.setattr(reader, name, reading(name))
        for data in configs:
            config_module.parse_config(data, "<docs test>", EXAMPLE.parent)
    return {normalize(p) for p in seen if not p.endswith("]")}  # "[i]": a list item


def method_options() -> dict[str, set[str]]:
    """Profile keys each protection method accepts, from its own parsing: an unknown key is
    answered with the allowed ones or 'takes no settings'."""
    from dicom_gateway.protect import method_names, parse_options
    from dicom_gateway.protect.options import OptionError

    probe = "\0probe"
    options: dict[str, set[str]] = {}
    for method in method_names():
        try:
            parse_options(method, {probe: 0})
            key, message = "", "accepted any key"
        except OptionError as exc:
            key, message = exc.key, exc.problem
        assert key == probe, f"method {method!r} does not reject unknown profile keys: {message}"
        if "takes no settings" in message:
            options[method] = set()
            continue
        listed = re.search(r"allowed: ([^)]*)\)", message)
        assert listed, f"cannot read the allowed keys of {method!r} from {message!r}"
        options[method] = {k.strip() for k in listed.group(1).split(",")}
    return options


def deidentify_options() -> set[str]:
    """Keys of a profile's ``deidentify`` block, from its own parsing (an unknown key is
    answered with the allowed ones), like :func:`method_options`."""
    from dicom_gateway.deid import DeidOptionError, parse_deidentify

    with pytest.raises(DeidOptionError) as caught:
        parse_deidentify({"\0probe": 0})
    listed = re.search(r"allowed: ([^)]*)\)", caught.value.problem)
    assert listed and caught.value.key == "\0probe", caught.value.problem
    return {k.strip() for k in listed.group(1).split(",")}


def config_keys(tmp: Path) -> set[str]:
    """Every configuration key path the code accepts, in the documentation's notation."""
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    keys = consulted_keys([example, _full_config(tmp)])
    for opts in method_options().values():
        keys.update(f"profiles.<name>.{k}" for k in opts)
    keys.update(f"profiles.<name>.deidentify.{k}" for k in deidentify_options())
    return keys


def key_literals(source: str) -> set[str]:
    """Key names written in the parser's source: first arguments of ``get``/``has``/``child``
    and the allowed lists given to ``mapping`` (literals, or module-level tuples/lists)."""
    tree = ast.parse(source)
    constants: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Tuple, ast.List)):
            names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)
                     and isinstance(e.value, str)]
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = names
    found: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.args):
            continue
        first = node.args[0]
        if node.func.attr in ("get", "has", "child") and isinstance(first, ast.Constant) \
                and isinstance(first.value, str):
            found.add(first.value)
        elif node.func.attr == "mapping":
            if isinstance(first, (ast.List, ast.Tuple)):
                found.update(e.value for e in first.elts if isinstance(e, ast.Constant))
            elif isinstance(first, ast.Name):
                found.update(constants.get(first.id, []))
    return found


def unreached(literals: set[str], keys: set[str]) -> set[str]:
    """Key names in the parser's source that no derived key path ends with."""
    leaves = {re.split(r"[.\]]", k)[-1] for k in keys}
    return literals - leaves


# -- configuration keys: what the documentation defines -------------------------------------
def _sections(text: str) -> Iterator[tuple[str, list[str]]]:
    heading, lines = "", []
    for line in text.splitlines():
        if line.startswith("#"):
            yield heading, lines
            heading, lines = line, []
        else:
            lines.append(line)
    yield heading, lines


def _row_keys(lines: list[str]) -> set[str]:
    keys = set()
    for line in lines:
        m = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if m:
            keys.add(m.group(1))
    return keys


def documented_keys(text: str) -> set[str]:
    """Keys defined in the documentation: the first cell of a table row, in backticks."""
    return _row_keys(text.splitlines())


def sync_problems(accepted: set[str], documented: set[str]) -> tuple[set[str], set[str]]:
    """(accepted but not documented, documented but not accepted)."""
    return accepted - documented, documented - accepted


@pytest.fixture(scope="module")
def accepted(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return config_keys(tmp_path_factory.mktemp("docs-config"))


def test_every_config_key_is_documented_and_nothing_else(accepted: set[str]) -> None:
    missing, stale = sync_problems(accepted, documented_keys(CONFIG_DOC.read_text("utf-8")))
    assert not missing, f"config keys without a row in docs/configuration.md: {sorted(missing)}"
    assert not stale, f"docs/configuration.md documents keys the parser rejects: {sorted(stale)}"


def test_the_parse_reaches_every_key_in_the_parser_source(accepted: set[str]) -> None:
    from dicom_gateway import config_audit, config_tls

    literals = set().union(*(key_literals(Path(m.__file__ or "").read_text(encoding="utf-8"))
                             for m in (config_module, config_tls, config_audit)))
    missing = unreached(literals, accepted)
    assert not missing, (f"config.py reads keys {sorted(missing)} that the test configurations "
                         "never reach: give _full_config a value for their section")


def test_each_method_section_documents_its_options() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    sections = list(_sections(text))
    for method, options in method_options().items():
        found = [lines for heading, lines in sections if f"`{method}`" in heading]
        assert found, f"docs/configuration.md has no heading naming method `{method}`"
        rows = _row_keys(found[0])
        want = {f"profiles.<name>.{k}" for k in options}
        assert rows == want, (f"method {method}: undocumented {sorted(want - rows)}, "
                              f"not accepted {sorted(rows - want)}")


def test_the_sync_check_fails_for_an_undocumented_key(accepted: set[str]) -> None:
    documented = documented_keys(CONFIG_DOC.read_text(encoding="utf-8"))
    missing, stale = sync_problems(accepted, documented)
    grown_missing, grown_stale = sync_problems(accepted | {"gateway.zz_synthetic"}, documented)
    assert grown_missing - missing == {"gateway.zz_synthetic"} and grown_stale == stale
    gone_missing, gone_stale = sync_problems(accepted, documented | {"gateway.zz_gone"})
    assert gone_stale - stale == {"gateway.zz_gone"} and gone_missing == missing


def test_a_key_added_to_the_parser_is_derived(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              accepted: set[str]) -> None:
    """End to end: a parser that also reads an optional ``gateway.zz_synthetic`` yields that
    key, and the check reports it as undocumented."""
    real = config_module._gateway

    def gateway_plus(r: Any, base_dir: Path) -> Any:
        r.get("zz_synthetic", dict, None)  # a new optional key, as it would be added
        return real(r, base_dir)

    monkeypatch.setattr(config_module, "_gateway", gateway_plus)
    keys = config_keys(tmp_path)
    assert keys - accepted == {"gateway.zz_synthetic"}
    missing, _ = sync_problems(keys, documented_keys(CONFIG_DOC.read_text(encoding="utf-8")))
    assert "gateway.zz_synthetic" in missing


def test_a_new_method_option_is_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass

    from dicom_gateway.protect import registry
    from dicom_gateway.protect.options import Options, option

    @dataclass(frozen=True)
    class ZzOptions(Options):
        surrogates: tuple[str, ...] = option(required="a list")
        zz_strength: int = option(1)

    monkeypatch.setitem(registry._METHODS, "zz_method", (lambda options: None, ZzOptions))
    assert method_options()["zz_method"] == {"surrogates", "zz_strength"}


def test_a_key_the_test_configs_miss_is_reported(accepted: set[str]) -> None:
    source = Path(config_module.__file__).read_text(encoding="utf-8")
    grown = source + "\n\ndef _zz(r):\n    return r.child('zz_section').mapping(['zz_a', 'zz_b'])\n"
    before = unreached(key_literals(source), accepted)
    assert unreached(key_literals(grown), accepted) - before == {"zz_section", "zz_a", "zz_b"}


def test_example_config_is_accepted_as_shipped() -> None:
    config_module.load_config(EXAMPLE)


# -- commands ---------------------------------------------------------------------------------
def commands() -> dict[str, set[str]]:
    """``{"spool purge": {"--config", ...}}`` for every leaf command of the CLI's parser."""
    from dicom_gateway.cli import _parser

    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[prefix] = {o for a in parser._actions for o in a.option_strings
                             if o.startswith("--") and o != "--help"}
        for action in subs:
            for name, child in action.choices.items():
                walk(child, f"{prefix} {name}".strip())

    walk(_parser(), "")
    return found


def _code(text: str) -> Iterator[str]:
    """Lines of fenced code blocks, and inline code spans (a span may wrap a line)."""
    fenced, prose = False, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            yield line
        else:
            prose.append(line)
    for paragraph in "\n".join(prose).split("\n\n"):
        for span in re.findall(r"`([^`]+)`", paragraph):
            yield " ".join(span.split())


_TOP_LEVEL = {command.split()[0] for command in commands()}
_INVOCATION = re.compile(r"(?:^|(?<=[\s/]))dicom-gateway[ \t]+([a-z][a-z-]*)"
                         r"(?:[ \t]+([a-z][a-z-]*))?")


def documented_invocations(text: str) -> Iterator[tuple[str, str, set[str]]]:
    """(first word, second word, long flags) of every ``dicom-gateway ...`` run in code. A flag
    belongs to the invocation before it on the same line; shell comments are ignored. Where the
    first word is no command, the match counts only if it is clearly the program (at the start,
    after a directory, or after ``--``, ``$``, ``&&``, ``;``, ``|``): ``kubectl -n dicom-gateway
    get pods`` names a namespace."""
    for line in _code(text):
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
        found = list(_INVOCATION.finditer(line))
        ends = [m.start() for m in found[1:]] + [len(line)] if found else []
        for m, end in zip(found, ends, strict=True):
            before = line[:m.start()]
            program = (not before.strip() or before.endswith("/")
                       or re.search(r"(--|\$|&&|;|\|)\s*$", before) is not None)
            if program or m.group(1) in _TOP_LEVEL:
                rest = line[m.end():end]
                yield m.group(1), m.group(2) or "", set(re.findall(r"--[a-z][a-z-]*", rest))


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_every_command_is_in_readme_or_operations() -> None:
    text = (ROOT / "README.md").read_text("utf-8") + OPERATIONS_DOC.read_text("utf-8")
    for command in commands():
        assert f"dicom-gateway {command}" in text, f"`dicom-gateway {command}` is not documented"


def test_the_command_reference_lists_every_flag() -> None:
    rows = [line for line in OPERATIONS_DOC.read_text("utf-8").splitlines()
            if line.startswith("|")]
    for command, flags in commands().items():
        row = [r for r in rows if re.match(rf"\|\s*`dicom-gateway {command}`", r)]
        assert row, f"docs/operations.md: no command reference row for {command}"
        missing = {f for f in flags if f not in row[0]}
        assert not missing, f"docs/operations.md: {command} row lacks {sorted(missing)}"


def test_documented_commands_and_flags_exist() -> None:
    known = commands()
    for path in _doc_files():
        for first, second, flags in documented_invocations(path.read_text("utf-8")):
            command = first if first in known else f"{first} {second}"
            assert command in known, f"{path.name}: `dicom-gateway {first} {second}` is no command"
            unknown = flags - known[command] - {"--help"}
            assert not unknown, f"{path.name}: dicom-gateway {command} has no {sorted(unknown)}"


def test_a_made_up_flag_would_be_caught() -> None:
    found = list(documented_invocations("```\n.venv/bin/dicom-gateway spool purge --all\n```"))
    assert found == [("spool", "purge", {"--all"})]
    assert "--all" not in commands()["spool purge"]
    assert list(documented_invocations("`dicom-gateway spool-purge`")) == [("spool-purge", "",
                                                                          set())]
    assert not list(documented_invocations("`kubectl -n dicom-gateway get pods`"))


# -- metric names and runbook anchors ----------------------------------------------------------
def metric_names() -> set[str]:
    from dicom_gateway.metrics import ForwardMetrics, Metrics

    names: set[str] = set()
    for registry in (Metrics().registry, ForwardMetrics().registry):
        for family in registry.collect():
            names.update(family.name + s for s in ("", "_total", "_bucket", "_sum", "_count",
                                                   "_info", "_created"))
    return names


def test_metric_names_in_operations_and_security_docs_exist() -> None:
    known = metric_names()
    for doc in ("operations.md", "security.md", "architecture.md", "partners.md"):
        for name in set(re.findall(r"dicom_gateway_[a-z_]+[a-z]", (DOCS / doc).read_text("utf-8"))):
            assert name in known, (f"docs/{doc} names metric {name}, "
                                   "which the gateway does not export")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_runbook_headings_have_the_anchors_alerts_link_to() -> None:
    text = OPERATIONS_DOC.read_text("utf-8")
    headings = {anchor(line[3:]) for line in text.splitlines() if line.startswith("## ")}
    for title in RUNBOOK:
        assert f"\n## {title}\n" in text, f"docs/operations.md lacks the heading '## {title}'"
        assert anchor(title) in headings
    assert anchor("Spool disk nearly full") == "spool-disk-nearly-full"


def test_links_into_operations_resolve() -> None:
    """Alert rules, dashboards and docs link runbook entries as ``operations.md#anchor``."""
    headings = {anchor(line.lstrip("#")) for line in OPERATIONS_DOC.read_text("utf-8").splitlines()
                if line.startswith("#")}
    sources = [*_doc_files(), *(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]
    for path in sources:
        text = path.read_text("utf-8", "replace")
        for target in re.findall(r"operations\.md#([a-z0-9-]+)", text):
            assert target in headings, f"{path.relative_to(ROOT)} links to a missing #{target}"


def test_the_requeue_table_says_what_spool_retry_says(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`spool retry` tells when a running gateway picks the entries up; the runbook's Requeue
    table must name the same settings for each state (and need no restart)."""
    from dicom_gateway.cli import main

    config = tmp_path / "gw.yaml"
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    raw["gateway"]["spool_dir"] = str(tmp_path / "spool")
    config.write_text(yaml.safe_dump(raw))
    text = OPERATIONS_DOC.read_text("utf-8")
    table = text[text.index("\n## Requeue\n"):text.index("\n## Key rotation\n")]
    for state in ("failed", "quarantine"):
        assert main(["spool", "retry", "--config", str(config), "--state", state]) == 0
        settings = set(re.findall(r"gateway\.[a-z_]+", capsys.readouterr().out))
        row = next(line for line in table.splitlines() if line.startswith(f"| `{state}/"))
        assert settings and all(f"`{s}`" in row for s in settings), (state, settings, row)
        assert "restart" not in row.replace("no restart", ""), row
