"""Read YAML text strictly: UTF-8 only, no duplicate keys, a bounded expanded size.

PyYAML's ``safe_load`` lets the last of two equal keys win silently (even a whole section), decodes
nothing itself, and shares an aliased node instead of copying it, so a file of a few lines can stand
for billions of values once the loader walks it ("billion laughs"). Every workflow, override and
hierarchy YAML goes through :func:`load_yaml_text`, which refuses all three with one
:class:`WorkflowError` naming the file, the key and the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hdsu_ray.errors import WorkflowError, read_utf8

# Values (mappings, lists, scalars) a YAML document may expand to, aliases counted at every use.
# A workflow has a few hundred; a large selection list a few thousand.
MAX_VALUES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


# What YAML 1.1 (PyYAML) reads as text although a user means a number: no dot ("1e-3") or an
# unsigned exponent ("1.0e3"). Its float needs both: 1.0e-3, 1.0e+3.
_NUMBER_AS_TEXT = re.compile(r"[-+]?(\d[\d_]*)?\.?\d*[eE][-+]?\d+")


def number_written(value: Any) -> str | None:
    """For a string such as ``'1e-3'`` that YAML left as text: how to write it as a number
    (``1.0e-3``); ``None`` for any other value."""
    if not isinstance(value, str) or not _NUMBER_AS_TEXT.fullmatch(value.strip()):
        return None
    mantissa, _, exponent = value.strip().lower().partition("e")
    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
    exponent = exponent if exponent[:1] in "+-" else f"+{exponent}"
    written = f"{mantissa}e{exponent}"
    return None if written == value.strip() else written  # '1.0e-3' quoted: a plain type error


class NotYAML(WorkflowError):
    """The text is not YAML at all (a syntax or character error): an override takes it as a string."""


def read_text(path: Path, what: str = "workflow file") -> str:
    """``path`` decoded as UTF-8; a bad byte is a :class:`WorkflowError` with its line."""
    return read_utf8(path, what, lambda line, why: WorkflowError(
        f"line {line}: {why}", file=str(path),
        expected=f"a UTF-8 {what}; convert latin-1 with iconv -f latin1 -t utf8"))


def read_yaml_file(path: Path, what: str = "workflow file") -> Any:
    """The YAML document in ``path``, read by :func:`load_yaml_text`."""
    return load_yaml_text(read_text(path, what), file=str(path))


def load_yaml_text(text: str, file: str | None = None, key: str | None = None) -> Any:
    """Parse one YAML document safely (no Python tags) and strictly (see the module doc).

    Args:
        text: the document.
        file: named in errors.
        key: the key path the text is the value of (an override), prefixed to duplicate keys.
    """
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character first (a ReaderError)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(node, file, key or "")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise NotYAML(_yaml_problem(exc, text), file=file, key=key, expected="valid YAML") from None
    except (ValueError, OverflowError) as exc:  # a scalar Python cannot hold: 2020-13-45, 5000 digits
        raise NotYAML(f"not valid YAML (a value it cannot read: {str(exc)[:80]})", file=file, key=key,
                      expected="valid YAML") from None
    except RecursionError:
        raise WorkflowError("YAML nests too deep", file=file, key=key,
                            expected="a document nested a few dozen levels at most") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: it has a position, no mark
        line = text.count("\n", 0, exc.position) + 1
        return f"line {line}: not valid YAML (character #x{exc.character:04x} is not allowed)"
    line = f"line {mark.line + 1}: " if mark else ""
    return f"{line}not valid YAML ({getattr(exc, 'problem', None) or exc})"


def _check_node(root: yaml.Node, file: str | None, prefix: str) -> None:
    """Duplicate keys in any mapping, and the size the document expands to.

    An alias is the same node object as its anchor: the size is memoised per node, so this walk is
    linear in the text while it counts every use of an alias.
    """
    sizes: dict[int, int] = {}
    kids: dict[int, list[yaml.Node]] = {}  # the children of each node entered and not yet sized
    stack: list[tuple[yaml.Node, str, bool]] = [(root, prefix, False)]
    while stack:  # iterative post-order: deep nesting cannot overflow the Python stack here
        node, where, done = stack.pop()
        if id(node) in sizes:
            continue
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in kids.pop(id(node)))
            if sizes[id(node)] > MAX_VALUES:  # the lowest value that is too big: name its key
                raise WorkflowError(f"line {node.start_mark.line + 1}: expands to more than {MAX_VALUES} "
                                    "values (aliases of aliases?)", file=file, key=where or "(top level)",
                                    expected=f"at most {MAX_VALUES} values, counting every use of an alias")
            continue
        if id(node) in kids:  # entered and pushed again from inside its own value
            raise WorkflowError("an alias refers to the value that contains it", file=file,
                                key=where or "(top level)", expected="aliases of finished values only")
        children = _children(node, where, file)
        kids[id(node)] = [child for child, _ in children]
        stack.append((node, where, True))
        # Reversed, so values pop in document order: a too-large anchor is named where it is defined.
        stack.extend((child, sub, False) for child, sub in reversed(children) if id(child) not in sizes)


def _children(node: yaml.Node, where: str, file: str | None) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.SequenceNode):
        return [(v, f"{where}[{i}]") for i, v in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):
        return []
    out, seen = [], {}
    for k, v in node.value:
        if k.tag == _MERGE:  # "<<: *base": keys given beside it override the merged ones, by design
            out.append((v, where))
            continue
        name = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
        sub = f"{where}.{name}" if where else name
        if isinstance(k, yaml.ScalarNode):
            if k.value in seen:
                raise WorkflowError(f"line {k.start_mark.line + 1}: duplicate key {name!r} (first at line "
                                    f"{seen[k.value]})", file=file, key=sub,
                                    expected="each key once per mapping")
            seen[k.value] = k.start_mark.line + 1
        out += [(k, sub), (v, sub)]
    return out

