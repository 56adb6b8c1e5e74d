"""A bound on YAML alias expansion, for every place prompt frontmatter is
parsed: the gateway (to learn a prompt's kind) and the reference runner
(before AgentMark's own `yaml.safe_load`).

YAML aliases repeat an anchored node by reference, so a few hundred bytes
(`a: &a [x, x, ...]`, `b: &b [*a, *a, ...]`, ...) describe billions of
nodes. PyYAML builds them as shared references, cheaply; but whatever walks
the result (AgentMark's templating and validation did) pays for every one:
484 bytes cost a runner 14.7 s of CPU and 3.4 GB. Counting the nodes from
the parser's events, aliases counted at their anchor's size, costs time in
proportion to the text and refuses before anything is built.

Imports neither the gateway nor the runner: both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

# Far above any real prompt's frontmatter (tens of nodes), far below harm.
MAX_NODES = 100_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class TooManyNodes(ValueError):
    """The frontmatter, its aliases expanded, holds more than MAX_NODES nodes."""


@dataclass
class _Open:
    """A collection whose end event has not come yet."""

    anchor: str | None
    size: int = 1


def check_expansion(text: str, limit: int = MAX_NODES) -> None:
    """Raise TooManyNodes if `text` with every alias expanded has more than
    `limit` nodes; yaml.YAMLError if it does not parse."""
    sizes: dict[str, int] = {}  # anchor -> the size of the node it names
    open_collections: list[_Open] = []
    total = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_collections.append(_Open(event.anchor))
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            closed = open_collections.pop()
            if closed.anchor:
                sizes[closed.anchor] = closed.size
            if open_collections:
                open_collections[-1].size += closed.size  # the parent's count grows, the total does not
            continue
        if isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            size = sizes.get(event.anchor, 1)
        else:
            continue
        if open_collections:
            open_collections[-1].size += size
        else:
            total += size
        # Checked as sizes grow: open collections count toward the total.
        if total + sum(c.size for c in open_collections) > limit:
            raise TooManyNodes(f"more than {limit} YAML nodes once its aliases are expanded")
