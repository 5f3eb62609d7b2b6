"""``Decision``: what a method decided, as a versioned map ``{kind: payload}``.

Each kind's payload is plain JSON (``channels``: kept unit indices per changed group; ``depth``:
the removed residual blocks; ``kernel``: the kept window per changed convolution), read and
checked by the kind itself (:class:`~compressor.space.kinds.ChoiceKind`).  A kind a decision does
not name keeps everything.  Format 1 (``{"groups": ..., "removed_blocks": ...}``, written before
kinds were plug-ins) is read as ``channels`` and ``depth``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from .space import Space
from .space.kinds import Payload, get_kind, kind_names

FORMAT_VERSION = 2
FORMAT_1_KEYS = {"groups": "channels", "removed_blocks": "depth"}


class Decision(Mapping[str, Payload]):
    """Plain data, one payload per kind that changes something.  Serialises to JSON.

    Example:
        >>> d = Decision({"channels": {"layer1.0.conv1": [0, 2, 5]}, "depth": ["layer2.1#0"]})
        >>> Decision.from_json(d.to_json()) == d
        True
    """

    def __init__(self, choices: Mapping[str, Payload] | None = None) -> None:
        self._choices = {k: v for k, v in (choices or {}).items() if v not in (None, {}, [], ())}

    def __getitem__(self, kind: str) -> Payload:
        return self._choices[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Decision({self._choices!r})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, kinds in registration order."""
        order = {k: i for i, k in enumerate(kind_names())}
        return {k: _plain(self._choices[k]) for k in sorted(self._choices, key=lambda k: order.get(k, len(order)))}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Decision":
        """A decision from its JSON form (format 2, or format 1's ``groups``/``removed_blocks``);
        raises ValueError naming an unknown kind or a payload of the wrong shape."""
        if d and set(d) <= set(FORMAT_1_KEYS):
            d = {FORMAT_1_KEYS[k]: v for k, v in d.items()}
        out = {}
        for kind, raw in d.items():
            try:
                parse = get_kind(kind).parse
            except KeyError as exc:
                raise ValueError(f"decision names {exc.args[0]}") from None
            out[kind] = parse(raw)
        return cls(out)

    @classmethod
    def from_json(cls, text: str) -> "Decision":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_keep(cls, space: Space, keep: Mapping[str, np.ndarray]) -> "Decision":
        """The decision of 0/1 slot vectors (a kind left out keeps everything)."""
        return cls({k: get_kind(k).payload(space[k], np.asarray(v) > 0.5) for k, v in keep.items()})

    # -- views over a space ----------------------------------------------------------------------
    def validate(self, space: Space) -> None:
        """Raise ValueError naming the site if the decision does not fit ``space``."""
        for kind, payload in self._choices.items():
            if kind not in space:
                raise ValueError(f"decision has {kind} choices, but the space has none")
            get_kind(kind).check(space[kind], payload)

    def keep(self, space: Space) -> dict[str, np.ndarray]:
        """0/1 per slot of every kind of ``space``."""
        return {k: np.asarray(get_kind(k).keep(space[k], self._choices.get(k)), dtype=np.float64) for k in space}

    def values(self, space: Space) -> dict[str, torch.Tensor]:
        """:meth:`keep` as double tensors: what the cost model and the gates take."""
        return {k: torch.from_numpy(v) for k, v in self.keep(space).items()}

    def cost(self, space: Space, what: str) -> float:
        return float(space.cost.of(what, self.values(space)))

    def flops(self, space: Space) -> float:
        return self.cost(space, "flops")

    def params(self, space: Space) -> float:
        return self.cost(space, "params")

    def rounded(self, space: Space, multiple: int) -> "Decision":
        """Every changed channel group grown to a multiple of ``multiple`` channels (lowest-numbered
        removed units back first); other kinds as they are."""
        keep = self.keep(space)
        for kind, choices in space.items():
            if kind in self._choices:
                k = keep[kind] > 0.5
                get_kind(kind).settle(choices, k, None, multiple)
                keep[kind] = k
        return Decision.from_keep(space, {k: v for k, v in keep.items() if k in self._choices})


def _plain(payload: Payload) -> Any:
    """Payloads as JSON types (numpy integers and tuples become ints and lists)."""
    if isinstance(payload, Mapping):
        return {str(k): _plain(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple, np.ndarray)):
        return [_plain(v) for v in payload]
    if isinstance(payload, np.integer):
        return int(payload)
    return payload


def random_decision(space: Space, ratio: float, *, blocks: bool = True, seed: int = 0,
                    block_fraction: float = 0.25) -> Decision:
    """A random decision keeping about ``ratio`` of every site each kind can change, and (with
    ``blocks``) removing about ``block_fraction`` of the residual blocks."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind, choices in space.items():
        items = get_kind(kind).checkable(choices)
        if kind == "depth":
            if not blocks or not items:
                continue
            items = sorted(rng.choice(items, size=int(round(len(items) * block_fraction)), replace=False).tolist())
        out[kind] = get_kind(kind).sample(choices, items, rng, lambda i: ratio)
    return Decision(out)
