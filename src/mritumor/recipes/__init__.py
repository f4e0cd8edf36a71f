"""Named training recipes: YAML files shipped inside the package, one per recipe.

A recipe file holds a ``description`` and one section per training command whose keys are that
command's flag names (``--image_size`` → ``image_size``), e.g.::

    description: ...
    train-multitask: {backbone: resnet18, decoder: unet, image_size: 128, epochs: 40}
    train-hierarchical: {...}

``--recipe NAME`` applies the section of the command being run; ``--config`` and explicit flags
win over it (:func:`mritumor.commands.common.apply_config`). Reading recipes needs no torch.
"""

from __future__ import annotations

from importlib import resources

import yaml

from mritumor.errors import MritumorError

COMMANDS = ("pretrain", "train-hierarchical", "train-multitask")


def recipe_names() -> list[str]:
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict:
    """The whole recipe file as a mapping (``description`` + one section per command)."""
    names = recipe_names()
    if name not in names:
        raise MritumorError(f"unknown recipe {name!r}; choose one of {', '.join(names)}")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text()
    recipe = yaml.safe_load(text) or {}
    if not isinstance(recipe, dict):
        raise MritumorError(f"recipe {name!r} is not a mapping")
    unknown = sorted(set(recipe) - {"description", "measured", *COMMANDS})
    if unknown:
        raise MritumorError(f"recipe {name!r} has unknown section(s) {unknown}")
    return recipe


def recipe_values(name: str, command: str) -> dict:
    """The flag values a recipe sets for one command ({} when it has no section for it)."""
    section = load_recipe(name).get(command) or {}
    if not isinstance(section, dict):
        raise MritumorError(f"recipe {name!r}: section {command!r} must map flag names to values")
    return {key.replace("-", "_"): value for key, value in section.items()}


def recipe_text(name: str) -> str:
    load_recipe(name)  # validates the name
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text()
