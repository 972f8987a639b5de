"""YAML files read with bounds: strict UTF-8, plain keys, limited nesting and alias expansion.

PyYAML's safe loader shares one object for every alias of an anchor, so a small file
of nested aliases ("billion laughs") loads quickly and then explodes in whatever walks
it (validation, hashing, printing). The loader here composes the node graph first and
refuses a document whose tree, with every alias expanded, has more than `MAX_NODES`
nodes or is nested deeper than `MAX_DEPTH`; it refuses a mapping key that is not a plain
value (`? [a, b]`) and a key given twice. Every problem is a `ScenarioError` (one line).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import ScenarioError

#: deepest nesting of mappings and lists a file may have (a scenario needs 5)
MAX_DEPTH = 64
#: most nodes the document may have with every alias expanded (a bundled scenario has a few hundred)
MAX_NODES = 100_000
#: largest file read (a scenario or profile is a few KB; a profile with a GEMM table some 100 KB)
MAX_FILE_BYTES = 16 * 2**20


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for error messages."""
    text = repr(value)
    return one_line(text, limit)


def read_text(path: Path, what: str = "file", fix: str = "check the path") -> str:
    """A regular file's text, decoded as strict UTF-8 (a BOM is dropped); ScenarioError otherwise."""
    source = str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ScenarioError(source, what, f"cannot read it ({e.strerror})", fix) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ScenarioError(source, what, f"cannot read it ({kind})", fix)
    if st.st_size > MAX_FILE_BYTES:
        raise ScenarioError(source, what, f"{st.st_size} bytes, over the {MAX_FILE_BYTES} bytes a file may have",
                            "check that this is the right file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ScenarioError(source, what, f"cannot read it ({e.strerror})", fix) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ScenarioError(source, f"byte {e.start} (line {line})",
                            f"not UTF-8 text (byte 0x{raw[e.start]:02x})",
                            "save the file as UTF-8 (or remove the byte)") from None
    return text.removeprefix("\ufeff")


class _TooLarge(yaml.composer.ComposerError):
    """A document past the bounds on nesting or alias expansion."""


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with plain, unique keys and nesting limited while composing."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_str(self, node):
        # an escape such as "\ud800" makes a lone surrogate: not a character, and no file, terminal
        # or JSON can hold it
        value = super().construct_yaml_str(node)
        bad = next((ch for ch in value if "\ud800" <= ch <= "\udfff"), None)
        if bad is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"U+{ord(bad):04X} is half of a UTF-16 surrogate pair, not a character", node.start_mark)
        return value

    def construct_yaml_timestamp(self, node):
        # a scenario has no dates: a value that looks like one stays the text it is
        return self.construct_scalar(node)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: its keys may be overridden here
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value", key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{one_line(key, 40)}' is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


BoundedLoader.add_constructor("tag:yaml.org,2002:str", BoundedLoader.construct_yaml_str)
BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", BoundedLoader.construct_yaml_timestamp)


def _check_size(node: yaml.Node) -> None:
    """Refuse a node graph whose expanded tree is too large or too deep (or refers to itself)."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, height)
    busy: set[int] = set()

    def walk(n: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(n)
        if key in memo:
            size, height = memo[key]
        else:
            if key in busy:
                raise _TooLarge(None, None, "an alias refers to the node that holds it", n.start_mark)
            if depth > MAX_DEPTH:
                raise _TooLarge(None, None, f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded",
                                n.start_mark)
            busy.add(key)
            size, height = 1, 1
            if isinstance(n, yaml.SequenceNode):
                children = n.value
            elif isinstance(n, yaml.MappingNode):
                children = [c for pair in n.value for c in pair]
            else:
                children = []
            for child in children:
                s, h = walk(child, depth + 1)
                size += s
                height = max(height, h + 1)
                if size > MAX_NODES:
                    break
            busy.discard(key)
            memo[key] = (size, height)
        if size > MAX_NODES:
            raise _TooLarge(None, None, f"more than {MAX_NODES} values once its aliases are expanded", n.start_mark)
        if depth + height - 1 > MAX_DEPTH:
            raise _TooLarge(None, None, f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded",
                            n.start_mark)
        return size, height

    walk(node, 1)


def _yaml_problem(e: Exception) -> tuple[str, str]:
    """(where, what) of a YAML error, each on one line."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return f"character {e.position}", f"special character U+{code:04X} is not allowed"
    where = f"line {mark.line + 1}" if mark is not None else "file"
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    return where, one_line(problem)


def parse_yaml(text: str, source: str, field: str = "file") -> Any:
    """The value of one YAML document, bounded as this module says; ScenarioError otherwise."""
    loader = None
    try:
        loader = BoundedLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        where, what = _yaml_problem(e)
        where = where if field == "file" else f"{field} ({where})"
        fix = ("write the values out plainly, with fewer nested aliases and levels" if isinstance(e, _TooLarge)
               else "fix the YAML syntax")
        raise ScenarioError(source, where, f"not valid YAML ({what})", fix) from None
    except RecursionError:
        raise ScenarioError(source, field, f"nested too deeply to read (over {MAX_DEPTH} levels)",
                            "flatten the YAML") from None
    except (ValueError, TypeError, OverflowError) as e:  # a constructor's own conversion (e.g. a date)
        raise ScenarioError(source, field, f"not valid YAML ({one_line(e)})", "fix the value") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: Path, what: str = "file") -> Any:
    """Read and parse a YAML file with every bound of this module."""
    return parse_yaml(read_text(path, what), str(path))
