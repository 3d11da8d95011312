"""The shared training recipe: bundled method files differ only in their graph; `base:` files."""
from __future__ import annotations

import pytest

from conftest import ROOT
from ktgraph.errors import GraphError
from ktgraph.graph import load_graph

METHOD_FILES = sorted((ROOT / "graphs").glob("*.yaml"))
RECIPE = ROOT / "graphs/recipes/digits.yaml"
# What is not the graph: the data (and its augmentation) and the whole training recipe.
NOT_THE_GRAPH = ("data", "train")
# What a method needs beyond the recipe, by file: KDCL-General's weights come from a held-out split, and
# a search's objective is measured on one.
METHOD_NEEDS = {"kdcl_general.yaml": {"data": {"val_split"}}, "dcl_search.yaml": {"data": {"val_split"}}}


def test_bundled_method_files_differ_only_in_their_graph():
    assert len(METHOD_FILES) >= 6
    first = load_graph(METHOD_FILES[0]).document
    for file in METHOD_FILES[1:]:
        document = load_graph(file).document
        for section in NOT_THE_GRAPH:
            needed = METHOD_NEEDS.get(file.name, {}).get(section, set())
            ours = {k: v for k, v in document[section].items() if k not in needed}
            assert ours == {k: v for k, v in first[section].items() if k not in needed}, \
                f"{file.name} departs from the recipe in `{section}`"
    # ... and the recipe holds the weight decay that once only independent.yaml set.
    assert first["train"]["optimizer"]["weight_decay"] == 5e-4
    assert all("base: recipes/digits.yaml" in f.read_text() for f in METHOD_FILES)


def _write(folder, name, text):
    (folder / name).write_text(text)
    return folder / name


GRAPH = """\
base: recipe.yaml
networks:
  net1: {model: resnet8}
links:
  - {kind: ce, target: net1}
train:
  optimizer: {lr: 0.05}
"""


def test_own_values_win_mapping_by_mapping(tmp_path):
    _write(tmp_path, "recipe.yaml", "train:\n  epochs: 3\n  optimizer: {lr: 0.1, weight_decay: 1.0e-3}\n")
    graph = load_graph(_write(tmp_path, "g.yaml", GRAPH), ["train.epochs=5"])
    optimizer = graph.document["train"]["optimizer"]
    assert (optimizer["lr"], optimizer["weight_decay"], graph.train.epochs) == (0.05, 1e-3, 5)
    assert "base" not in graph.document  # config.yaml holds the merged sections, never the include


def test_an_error_in_a_field_the_base_gives_names_the_base_files_line(tmp_path):
    recipe = _write(tmp_path, "recipe.yaml", "train:\n  epochs: 3\n  optimizer: {momentum: 1.5}\n")
    with pytest.raises(GraphError) as caught:
        load_graph(_write(tmp_path, "g.yaml", GRAPH))
    assert caught.value.file == str(recipe) and caught.value.line == 3


@pytest.mark.parametrize("base, recipe, message, line", [
    ("recipes.yaml", None, "base file `recipes.yaml` does not exist", 1),
    ("[a, b]", None, "`base` names the file this graph builds on", 1),
    ("recipe.yaml", "base: other.yaml\n", "a base file cannot name a base of its own", 1),
    ("recipe.yaml", "- 1\n", "a base file holds sections", None),
])
def test_bad_base_is_a_located_error(tmp_path, base, recipe, message, line):
    if recipe is not None:
        _write(tmp_path, "recipe.yaml", recipe)
    with pytest.raises(GraphError) as caught:
        load_graph(_write(tmp_path, "g.yaml", GRAPH.replace("recipe.yaml", base)))
    assert message in str(caught.value) and caught.value.line == line
