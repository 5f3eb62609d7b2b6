"""A recipe's ``rules``: per-module constraints by fnmatch pattern, for every kind of choice.

    rules: {"head*": null, "layer4.*": {min_keep: 0.5}, "*.dw": {kernel: [3, 5]}}

Patterns match module names; a site matches when a module it touches does (a channel group: every
module whose parameters read or write its units; a residual block: its owner and its modules; a
convolution's kernel: the convolution).  ``null`` leaves the matched modules untouched by every
kind (their sites are frozen, as torch-pruning's ``ignored_layers``); a mapping hands each kind the
keys it takes (``min_keep`` to channels, ``kernel`` to kernel).  Rules apply in order, so a later
mapping wins over an earlier one on the sites both match; ``null`` is final (a frozen site stays
frozen).  A pattern that matches nothing, or a key no kind takes, is an error.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from .recipe import RecipeError
from .space import Space
from .space.kinds import get_kind


def apply_rules(space: Space, rules: dict[str, dict[str, Any] | None]) -> tuple[Space, dict[str, list[str]]]:
    """The space with ``rules`` applied, and per pattern what it froze or constrained (lines)."""
    report: dict[str, list[str]] = {}
    for pattern, rule in rules.items():
        taken: set[str] = set()
        lines: list[str] = []
        for kind in space:
            kd = get_kind(kind)
            settings = {k: v for k, v in (rule or {}).items() if k in kd.rule_keys}
            taken |= settings.keys()
            hits = [s for s in space[kind].items() if any(fnmatchcase(m, pattern) for m in kd.modules(space[kind], s))]
            if not hits or (rule is not None and not settings):
                continue
            if rule is None:
                why = f"rule {pattern!r}: left untouched"
                fresh = {s: why for s in hits if s not in kd.frozen(space[kind])}
                space = space.replace(**{kind: kd.freeze(space[kind], fresh)})
                lines += [f"{kind} {s}: frozen" for s in fresh]
                continue
            choices = space[kind]
            for site in hits:
                try:
                    choices = kd.constrain(choices, site, settings)
                except ValueError as exc:
                    raise RecipeError(f"rules[{pattern!r}]: {kind} {site}: {exc}") from None
                lines.append(f"{kind} {site}: {', '.join(f'{k} {v}' for k, v in settings.items())}")
            space = space.replace(**{kind: choices})
        unknown = set(rule or {}) - taken
        if unknown:
            raise RecipeError(f"rules[{pattern!r}]: no kind of choice in this space takes {', '.join(sorted(unknown))} "
                              f"(the space has {', '.join(space)})")
        if not lines and not _matches_any(space, pattern):
            raise RecipeError(f"rules: pattern {pattern!r} matches no module that any kind of choice touches")
        report[pattern] = lines
    return space, report


def _matches_any(space: Space, pattern: str) -> bool:
    return any(fnmatchcase(m, pattern) for kind in space for s in space[kind].items()
               for m in get_kind(kind).modules(space[kind], s))
