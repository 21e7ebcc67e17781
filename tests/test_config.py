"""Recipe loading: includes, overrides, strict keys and types, hash, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from aigp_train.config import RecipeError, help_field, load_recipe, recipe_hash


@dataclass
class Inner:
    lr: float = help_field("learning rate")
    steps: int = help_field("number of steps")


@dataclass
class Demo:
    output_dir: str = help_field("where outputs go")
    train: Inner = help_field("training block")
    name: str = help_field("a name", default="x")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_include_then_override(tmp_path):
    _write(tmp_path, "base.yaml", "output_dir: a\ntrain: {lr: 0.1, steps: 3}\n")
    child = _write(tmp_path, "child.yaml", "include: [base.yaml]\ntrain: {steps: 5}\n")
    r = load_recipe(child, Demo, ["train.lr=0.5"])
    assert (r.output_dir, r.train.lr, r.train.steps, r.name) == ("a", 0.5, 5, "x")


def test_unknown_key_names_key_file_and_accepted(tmp_path):
    _write(tmp_path, "base.yaml", "output_dir: a\ntrain: {lr: 0.1, steps: 3}\n")
    child = _write(tmp_path, "child.yaml", "include: [base.yaml]\ntrain: {stpes: 5}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(child, Demo)
    msg = str(err.value)
    assert "train.stpes" in msg and "child.yaml" in msg and "lr, steps" in msg


def test_wrong_type_is_an_error(tmp_path):
    p = _write(tmp_path, "r.yaml", "output_dir: a\ntrain: {lr: fast, steps: 3}\n")
    with pytest.raises(RecipeError, match="train.lr"):
        load_recipe(p, Demo)


def test_missing_value_is_an_error(tmp_path):
    p = _write(tmp_path, "r.yaml", "output_dir: a\ntrain: {lr: 0.1}\n")
    with pytest.raises(RecipeError, match="train.steps"):
        load_recipe(p, Demo)


def test_include_cycle(tmp_path):
    _write(tmp_path, "a.yaml", "include: [b.yaml]\n")
    b = _write(tmp_path, "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(b, Demo)


def test_hash_depends_on_values_only(tmp_path):
    a = _write(tmp_path, "a.yaml", "output_dir: a\ntrain: {lr: 0.1, steps: 3}\n")
    b = _write(tmp_path, "b.yaml", "train: {steps: 3, lr: 0.1}\noutput_dir: a\n")
    assert recipe_hash(load_recipe(a, Demo)) == recipe_hash(load_recipe(b, Demo))
    assert recipe_hash(load_recipe(a, Demo)) != recipe_hash(load_recipe(a, Demo, ["train.steps=4"]))


def test_cli_unknown_stage_and_help():
    out = subprocess.run([sys.executable, "-m", "aigp_train.cli", "nosuchstage"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown stage" in out.stderr
    out = subprocess.run([sys.executable, "-m", "aigp_train.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "simulate" in out.stdout
