"""``mritumor recipes``: the named training recipes shipped with the package."""

from __future__ import annotations

import textwrap

from mritumor.commands.common import add_command

DESCRIPTION = """\
Lists the named recipes (`--recipe NAME` on pretrain, train-hierarchical and train-multitask),
or prints one recipe's YAML. A recipe's keys are the command's flag names; explicit flags and
--config win over it, and every run's config.yaml records the values it ran with."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "recipes", "list or show the named training recipes", DESCRIPTION
    )
    parser.add_argument("name", nargs="?", default=None, help="print this recipe's YAML")
    parser.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.recipes import load_recipe, recipe_names, recipe_text

    if args.name:
        print(recipe_text(args.name), end="")
        return
    for name in recipe_names():
        recipe = load_recipe(name)
        description = recipe.get("description", "").strip()
        print(name)
        print(textwrap.fill(description, width=96, initial_indent="  ", subsequent_indent="  "))
        for command in ("pretrain", "train-hierarchical", "train-multitask"):
            values = recipe.get(command) or {}
            if values:
                flags = " ".join(f"--{key} {value}" for key, value in values.items())
                print(f"  {command}: {flags}")
        print()
