"""YAML loading that remembers the line of every value, for errors a person can act on.

Plain PyYAML safe loading, plus a map from YAML path (`teams.backend-eng.max_budget`)
to line number. It does not validate anything: `policy.py` and `pricing.py` do.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass(slots=True)
class Source:
    """A loaded YAML document and where each of its values stood."""

    path: str
    data: Any
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, ypath: str) -> str:
        """`file:line` for a YAML path, falling back to its nearest parent's line."""
        probe = ypath
        while probe:
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.path


def join(parent: str, key: object) -> str:
    """The YAML path of `key` under `parent` (list items as `[i]`)."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _walk(
    node: yaml.Node, ypath: str, lines: dict[str, int], line: int, source: str
) -> None:
    lines.setdefault(ypath, line)
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                if key in seen:
                    where = join(ypath, key)
                    raise ConfigError(
                        f"{source}:{key_line}: {where}: given twice (first on line"
                        f" {seen[key]}); YAML keeps only the last, so remove one"
                    )
                seen[key] = key_line
            _walk(value_node, join(ypath, key_node.value), lines, key_line, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, join(ypath, i), lines, item.start_mark.line + 1, source)


def parse_yaml(text: str, *, source: str) -> Source:
    """Parse YAML text; syntax errors become ConfigError naming file and line."""
    try:
        refuse_aliases(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines, node.start_mark.line + 1, source)
    return Source(path=source, data=data, lines=lines)


def refuse_aliases(text: str, source: str) -> None:
    """Aliases (`*name`) are refused: one line of them can stand for billions."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else 0
            raise ConfigError(
                f"{source}:{line}: YAML aliases (*{event.anchor}) are not accepted;"
                " write the value out"
            )


def load_yaml(path: Path) -> Source:
    """Read and parse a YAML file; a missing or unreadable file is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_yaml(text, source=str(path))
