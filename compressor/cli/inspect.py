"""``compress inspect MODEL``: what can change in a model, kind by kind, and what the recipe's rules
froze or constrained; ``compress list``: known model names."""
from __future__ import annotations

import argparse
import time


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..frontend import trace
    from ..methods import get_method
    from ..recipe import load_recipe
    from ..rules import apply_rules
    from ..space import kind_names
    from ..space.kinds import get_kind
    from ..zoo import create_model, example_input
    from .run import set_values

    sets = set_values(args.set)
    recipe = load_recipe(args.recipe, sets) if args.recipe or sets else None
    # every kind unless told, but for the ones choosing among operations (each option is traced: slow)
    kinds = recipe.choices if args.recipe or "choices" in sets else [k for k in kind_names() if not get_kind(k).one_of]
    model = create_model(args.model, **(recipe.model_args if recipe else {})).eval()
    x = example_input(args.model, model, size=args.size)
    options = get_method(recipe.method.name).trace_options(recipe.method) if recipe else {}  # e.g. candidates
    t0 = time.perf_counter()
    space = trace(model, x, kinds=kinds, **options)
    seconds = time.perf_counter() - t0
    rules = {}
    if recipe is not None and recipe.rules:
        space, rules = apply_rules(space, recipe.rules)
    print(f"{args.model}: input {'x'.join(map(str, x.shape))}, traced in {seconds:.1f} s")
    print(f"total: {_fmt(space.cost.full('flops'))} FLOPs (multiply-accumulates, fvcore convention + attention), "
          f"{_fmt(space.cost.full('params'))} params")
    for kind in space:
        print()
        print("\n".join(get_kind(kind).describe(space, space[kind], verbose=args.all)))
    if rules:
        print("\nrules:")
        for pattern, lines in rules.items():
            print(f"  {pattern!r}: " + ("; ".join(lines) if lines else "nothing left to change (already frozen)"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..zoo import list_models

    for name in list_models(args.filter):
        print(name)
    return 0
