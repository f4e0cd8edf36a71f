"""Named recipes: every file loads, every key is a real flag of its command, and the order
command line > --config > --recipe > built-in default holds."""

from __future__ import annotations

import argparse

import pytest
import yaml

from mritumor import recipes
from mritumor.cli import build_parser, main
from mritumor.commands.common import apply_config
from mritumor.errors import MritumorError


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise AssertionError(command)


def test_the_three_documented_recipes_ship():
    assert {"cpu-quick", "cpu", "gpu"} <= set(recipes.recipe_names())


@pytest.mark.parametrize("name", recipes.recipe_names())
def test_every_recipe_key_is_a_flag_of_its_command(name):
    recipe = recipes.load_recipe(name)
    parser = build_parser()
    sections = [c for c in recipes.COMMANDS if recipe.get(c)]
    assert "train-multitask" in sections
    for command in sections:
        sub = command_parser(parser, command)
        dests = {action.dest: action for action in sub._actions}
        for key, value in recipe[command].items():
            assert key in dests, f"recipe {name}: {key} is not a flag of {command}"
            choices = dests[key].choices
            assert choices is None or value in choices, (name, command, key, value)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    return apply_config(parser, parser.parse_args(argv), argv)


def test_recipe_then_config_then_flags(tmp_path):
    base = ["train-multitask", "--data_root", "d", "--outdir", "o"]
    cpu = recipes.recipe_values("cpu", "train-multitask")
    plain = parse(base)
    with_recipe = parse([*base, "--recipe", "cpu"])
    assert with_recipe.backbone == cpu["backbone"] != plain.backbone
    assert with_recipe.image_size == cpu["image_size"] != plain.image_size
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"image_size": 64, "epochs": 3}))
    both = parse([*base, "--recipe", "cpu", "--config", str(config)])
    assert (both.image_size, both.epochs, both.backbone) == (64, 3, cpu["backbone"])
    explicit = parse([*base, "--recipe", "cpu", "--config", str(config), "--epochs", "7"])
    assert (explicit.epochs, explicit.image_size) == (7, 64)


def test_a_recipe_with_an_unknown_key_is_refused(monkeypatch):
    monkeypatch.setattr(
        recipes, "recipe_values", lambda name, command: {"image_size": 64, "no_such_flag": 1}
    )
    with pytest.raises(MritumorError, match="no_such_flag"):
        parse(["train-multitask", "--data_root", "d", "--outdir", "o", "--recipe", "cpu"])


def test_unknown_recipe_name_is_a_clear_error(capsys):
    argv = ["train-multitask", "--data_root", "d", "--outdir", "o", "--recipe", "nope"]
    assert main(argv) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_recipes_command_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in recipes.recipe_names())
    assert main(["recipes", "cpu"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == recipes.load_recipe("cpu")
