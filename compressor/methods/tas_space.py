"""TAS's searchable shape over any :class:`~compressor.space.Space`: width and depth logits and
the relaxed network they describe (DESIGN 5.2, generalised from ResNets to every channel group
and every stage).

* Width: per channel group, logits ``alpha`` over candidate widths ``{floor(r * units)}``; units
  are ranked (pinned units first, then by an importance score), so a width keeps a prefix.
* Sampling (training forward): ``z = (log_softmax(alpha) + Gumbel) / tau``; ``|I|`` distinct
  candidates drawn from ``softmax(z)`` and weighted by the softmax of ``z`` over those alone.
  The widths are aligned by zero padding (each unit weighted by the total weight of the sampled
  widths that keep it; the default), or with ``mixture: cwi`` (the paper) by channel-wise
  interpolation (output channel k of the widest averages the narrower prefix's channels
  ``floor(k C/C')`` ... ``ceil((k+1) C/C') - 1``) in a group whose every consumer contracts over
  it (dense conv/linear inputs), else by padding.
* Depth: per stage (a run of blocks on one residual stream), logits ``beta`` over how many
  leading blocks are kept; a Gumbel-softmax ``q`` over all candidates gives block ``p`` of the
  stage the gate ``sum_k q_k [depth_k > p]``: the probability that the depth reaches it (exact
  at one-hot ``q``).
* Eval forward and the final shape: the argmax width and depth.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..gates import MIX, GateController
from ..space import Space


def width_candidates(size: int, ratios: list[float], *, pinned: int = 0, channels: int = 1,
                     round_to: int | None = None) -> list[int]:
    """Distinct candidate widths (in units) of a group: ``floor(r * size)`` per ratio, at least one
    unit and the pinned ones; multiples of ``round_to`` channels when the group has at least
    two such multiples."""
    out = set()
    for r in ratios:
        n = math.floor(r * size)
        if round_to and round_to > 1 and size * channels >= 2 * round_to:
            n = math.ceil(n * channels / round_to) * round_to // channels
        out.add(int(min(size, max(n, pinned, 1))))
    return sorted(out)


def depth_candidates(n: int) -> list[int]:
    """Candidate numbers of kept blocks for a stage of ``n`` removable blocks.  TAS's rule counts
    the stage's fixed first block too (m = n + 1 layers): odd counts plus m when m > 3, all of
    1..m otherwise."""
    m = n + 1
    layers = set(range(1, m + 1, 2)) | {m} if m > 3 else set(range(1, m + 1))
    return sorted(k - 1 for k in layers)


def _gumbel(shape, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device).clamp(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


HEAD_START = 2.0  # logit added for ``init: budget``: about half the probability among 8 candidates


@dataclass(frozen=True)
class SearchedSite:
    """A site whose width tas searches: ``slots`` of ``kind`` in keeping order (a width keeps a
    prefix), the candidate widths (slot counts), and whether channel-wise interpolation aligns
    its sampled widths."""

    kind: str
    name: str
    slots: np.ndarray
    widths: list[int]
    cwi: bool = False


def channel_sites(space: Space, cfg, scores: np.ndarray, round_to: int | None, mixable: np.ndarray | None
                  ) -> list[SearchedSite]:
    """Every prunable channel group with two candidate widths or more: units ranked pinned first,
    then by ``scores`` (best first); widths from ``cfg.ratios``."""
    choices = space["channels"]
    mixable = np.zeros(choices.size, dtype=bool) if mixable is None or cfg.mixture == "pad" else mixable
    free = choices.free()
    sites = []
    for g in choices.groups:
        if not g.prunable or not free[g.units].any():
            continue
        order = np.lexsort((-scores[g.units], ~g.pinned))  # pinned first, then best score first
        cands = width_candidates(g.size, cfg.ratios, pinned=int(g.pinned.sum()),
                                 channels=int(g.channels[0]) if len(g.channels) else 1, round_to=round_to)
        if len(cands) >= 2:
            sites.append(SearchedSite("channels", g.name, g.offset + order, cands, bool(mixable[g.units].all())))
    return sites


class TasArchitecture(GateController):
    """Width logits ``alpha`` (searched sites x candidates) and depth logits ``beta`` (stages x
    candidates); ``forward`` gives the gate values of the relaxed network (see module doc)."""

    def __init__(self, space: Space, cfg, sites: list[SearchedSite], *, head_start: dict[str, int] | None = None
                 ) -> None:
        super().__init__()
        self.sizes = {k: space[k].size for k in space}
        offsets = np.cumsum([0] + list(self.sizes.values()))
        self.offset = dict(zip(self.sizes, offsets[:-1].tolist()))
        self.total = int(offsets[-1])
        self.candidates = cfg.candidates
        self.tau = cfg.tau_max
        self.site_names = [s.name for s in sites]
        self._width_tables(sites)
        self.alpha = nn.Parameter(torch.randn(*self.widths.shape) * 0.01)
        if head_start is not None:  # the candidate nearest each site's given width starts ahead
            with torch.no_grad():
                for i, s in enumerate(sites):
                    kept = head_start.get(s.name, s.widths[-1])
                    self.alpha[i, int(np.argmin([abs(c - kept) for c in s.widths]))] += HEAD_START
        self.register_buffer("alpha_init", self.alpha.detach().clone())  # where the search started
        stages: dict[str, list[int]] = {}
        if cfg.depth and "depth" in space:
            for i, b in enumerate(space["depth"].blocks):
                stages.setdefault(b.stage, []).append(i)
        self.stage_names = list(stages)
        self._depth_tables(list(stages.values()))
        self.beta = nn.Parameter(torch.randn(*self.depths.shape) * 0.01)
        if head_start is not None:  # and so does full depth
            with torch.no_grad():
                self.beta[torch.arange(len(stages)), self.depth_valid.sum(1) - 1] += HEAD_START
        self.register_buffer("beta_init", self.beta.detach().clone())
        self._noise: dict[str, torch.Tensor] | None = None

    def _width_tables(self, sites: list[SearchedSite]) -> None:
        """Candidate widths per site, and per searched slot its site, rank and flat index."""
        units, unit_site, rank, unit_at = [], [], [], []
        for i, s in enumerate(sites):
            flat = self.offset[s.kind] + np.asarray(s.slots)
            units.extend(flat.tolist())
            unit_site.extend([i] * len(flat))
            rank.extend(range(len(flat)))
            unit_at.append(flat)
        n_c = max((len(s.widths) for s in sites), default=1)
        table = torch.zeros(len(sites), n_c, dtype=torch.long)
        valid = torch.zeros(len(sites), n_c, dtype=torch.bool)
        for i, s in enumerate(sites):
            table[i, :len(s.widths)] = torch.tensor(s.widths)
            valid[i, :len(s.widths)] = True
        self.register_buffer("widths", table)
        self.register_buffer("width_valid", valid)
        self.register_buffer("units", torch.tensor(units, dtype=torch.long))  # flat slot over every kind
        self.register_buffer("unit_group", torch.tensor(unit_site, dtype=torch.long))
        self.register_buffer("unit_rank", torch.tensor(rank, dtype=torch.long))
        self.register_buffer("cwi_group", torch.tensor([s.cwi for s in sites], dtype=torch.bool))
        at = torch.full((len(unit_at), max((len(u) for u in unit_at), default=1)), self.total, dtype=torch.long)
        for i, u in enumerate(unit_at):
            at[i, :len(u)] = torch.from_numpy(u)
        self.register_buffer("unit_at", at)  # flat slot of (site, rank)
        self.min_valid = int(valid.sum(1).min()) if len(sites) else 0

    def _depth_tables(self, stages: list[list[int]]) -> None:
        """Candidate depths per stage, and per block its stage and position in it."""
        depths = [depth_candidates(len(bs)) for bs in stages]
        n_d = max((len(d) for d in depths), default=1)
        dt = torch.zeros(len(depths), n_d, dtype=torch.long)
        dv = torch.zeros(len(depths), n_d, dtype=torch.bool)
        block_stage, block_pos, block_idx = [], [], []
        for s, (bs, ds) in enumerate(zip(stages, depths)):
            dt[s, :len(ds)] = torch.tensor(ds)
            dv[s, :len(ds)] = True
            block_idx.extend(bs)
            block_stage.extend([s] * len(bs))
            block_pos.extend(range(len(bs)))
        self.register_buffer("depths", dt)
        self.register_buffer("depth_valid", dv)
        self.register_buffer("blocks", torch.tensor(block_idx, dtype=torch.long))
        self.register_buffer("block_stage", torch.tensor(block_stage, dtype=torch.long))
        self.register_buffer("block_pos", torch.tensor(block_pos, dtype=torch.long))

    # -- distributions ---------------------------------------------------------------------------
    def width_log_probs(self) -> torch.Tensor:
        return F.log_softmax(self.alpha.float().masked_fill(~self.width_valid, -math.inf), dim=1)

    def depth_log_probs(self) -> torch.Tensor:
        return F.log_softmax(self.beta.float().masked_fill(~self.depth_valid, -math.inf), dim=1)

    def _unit_values(self, group_weights: torch.Tensor) -> torch.Tensor:
        """Per searched unit: the total weight (over candidates) of the widths that keep it."""
        keeps = self.unit_rank[:, None] < self.widths[self.unit_group]      # (U, C)
        return (group_weights[self.unit_group] * keeps).sum(1)

    def _block_values(self, depth_weights: torch.Tensor) -> torch.Tensor:
        reach = self.depths[self.block_stage] > self.block_pos[:, None]    # (B, D)
        return (depth_weights[self.block_stage] * reach).sum(1)

    def _full(self, unit_values: torch.Tensor | None, block_values: torch.Tensor | None, dtype=torch.float32
              ) -> dict[str, torch.Tensor]:
        """Values per kind: searched slots and blocks as given, every other one 1 (None: all 1,
        with no autograd graph)."""
        flat = torch.ones(self.total, dtype=dtype, device=self.alpha.device)
        if unit_values is not None and len(self.units):
            flat = flat.index_put((self.units,), unit_values.to(dtype))
        out = {k: flat[o:o + n] for (k, n), o in zip(self.sizes.items(), self.offset.values())}
        if "depth" in out:
            blocks = torch.ones(self.sizes["depth"], dtype=dtype, device=self.alpha.device)
            if block_values is not None and len(self.blocks):
                blocks = blocks.index_put((self.blocks,), block_values.to(dtype))
            out["depth"] = blocks
        return out

    def expected_keep(self) -> dict[str, torch.Tensor]:
        """P(unit kept) and P(block kept) under the plain softmax (no noise), differentiable; the
        cost model at these values is TAS's expected cost (products of expected widths)."""
        return self._full(self._unit_values(self.width_log_probs().exp()),
                          self._block_values(self.depth_log_probs().exp()), torch.float64)

    @torch.no_grad()
    def argmax_keep(self) -> dict[str, torch.Tensor]:
        """0/1 keep values of the argmax architecture."""
        w = F.one_hot(self.width_log_probs().argmax(1), self.widths.shape[1]).float()
        d = F.one_hot(self.depth_log_probs().argmax(1), self.depths.shape[1]).float()
        return self._full(self._unit_values(w), self._block_values(d), torch.float64)

    @contextmanager
    def fixed_sample(self):
        """Within the block, every forward reuses one draw of Gumbel noise and candidates (the
        weights are still recomputed from the logits), e.g. for the forwards of one second-order
        architecture step."""
        self._noise = {}
        try:
            yield
        finally:
            self._noise = None

    def _draw(self, key: str, make):
        if self._noise is None:
            return make()
        if key not in self._noise:
            self._noise[key] = make()
        return self._noise[key]

    # -- the relaxed network ---------------------------------------------------------------------
    def forward(self):
        if not self.training:
            return {k: v.float() for k, v in self.argmax_keep().items()}
        tau = max(self.tau, 1e-6)
        values = mix = None
        if len(self.widths):
            z = (self.width_log_probs() + self._draw("gw", lambda: _gumbel(self.alpha.shape, self.alpha))) / tau
            k = max(1, min(self.candidates, self.min_valid))
            sel = self._draw("sel", lambda: torch.multinomial(F.softmax(z.detach(), 1), k, replacement=False))
            w = F.softmax(z.gather(1, sel), dim=1)                                         # (G, k)
            weights = torch.zeros_like(z).scatter(1, sel, w)                               # (G, C)
            if bool(self.cwi_group.any()):
                mix = self._cwi_mix(sel, w)
            if not bool(self.cwi_group.all()):  # CWI groups keep unit values of 1 (no graph)
                values = self._unit_values(weights)
                values = torch.where(self.cwi_group[self.unit_group], torch.ones_like(values), values)
        depth = None
        if len(self.depths):
            zd = (self.depth_log_probs() + self._draw("gd", lambda: _gumbel(self.beta.shape, self.beta))) / tau
            depth = self._block_values(F.softmax(zd, dim=1))
        return {**self._full(values, depth), MIX: mix}

    def _cwi_mix(self, sel: torch.Tensor, w: torch.Tensor):
        """``(src, dst, value, mixed)`` for :class:`~compressor.gates.GateValues.mix`: in each CWI
        group the channel of rank ``k`` (below the widest sampled width) becomes
        ``sum_j w_j * mean(channels of ranks R_j(k))``, ``R_j(k)`` candidate j's CWI window."""
        cw = self.widths.gather(1, sel)                                 # (G, k) sampled widths
        c_max = cw.max(1).values                                       # (G,)
        cwi_units = self.cwi_group[self.unit_group]
        g = self.unit_group[cwi_units]
        k_rank = self.unit_rank[cwi_units]                             # aligned position k
        cj, wj, cm = cw[g], w[g], c_max[g][:, None]                    # (U, k)
        inside = (k_rank[:, None] < cm).to(w.dtype)
        start = torch.div(k_rank[:, None] * cj, cm, rounding_mode="floor")
        end = torch.div((k_rank[:, None] + 1) * cj + cm - 1, cm, rounding_mode="floor")
        count = (end - start).clamp(min=1)
        srcs, dsts, vals = [], [], []
        for extra in (0, 1):  # a window spans one or two narrower channels
            rank_i = (start + extra).clamp(max=self.unit_at.shape[1] - 1)
            ok = (start + extra < end).to(w.dtype)
            base, n = self.offset["channels"], self.sizes["channels"]  # n: "no unit" (padding)
            src = (self.unit_at[g[:, None].expand_as(rank_i), rank_i] - base).clamp(max=n)  # a channel of the window
            dst = (self.unit_at[g, k_rank][:, None].expand_as(rank_i) - base).clamp(max=n)  # the aligned position k
            srcs.append(src.reshape(-1))
            dsts.append(dst.reshape(-1))
            vals.append((wj / count * ok * inside).reshape(-1))
        mixed = torch.zeros(self.sizes["channels"] + 1, dtype=torch.bool, device=w.device)
        mixed[self.units[cwi_units] - self.offset["channels"]] = True
        return torch.cat(srcs), torch.cat(dsts), torch.cat(vals), mixed

    # -- results ---------------------------------------------------------------------------------
    @torch.no_grad()
    def movement(self) -> dict[str, float | str]:
        """How far the search moved from its start: the largest change of any logit, and how many
        groups / stages have another argmax width / depth than at the start."""
        def moved(now, start, valid) -> str:
            changed = now.masked_fill(~valid, -math.inf).argmax(1) != start.masked_fill(~valid, -math.inf).argmax(1)
            return f"{int(changed.sum())}/{len(changed)}"
        delta = torch.cat([(self.alpha - self.alpha_init).flatten(), (self.beta - self.beta_init).flatten()])
        return {"logit_move_max": round(float(delta.abs().max()), 4) if delta.numel() else 0.0,
                "groups_moved": moved(self.alpha, self.alpha_init, self.width_valid),
                "stages_moved": moved(self.beta, self.beta_init, self.depth_valid)}

    def argmax_shape(self) -> tuple[dict[str, int], dict[str, int]]:
        """Searched width (units) per group and kept blocks per stage of the argmax architecture."""
        wi = self.width_log_probs().argmax(1)
        di = self.depth_log_probs().argmax(1)
        widths = {n: int(self.widths[i, wi[i]]) for i, n in enumerate(self.site_names)}
        depths = {n: int(self.depths[i, di[i]]) for i, n in enumerate(self.stage_names)}
        return widths, depths
