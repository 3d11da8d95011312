"""Shared test helpers: a tiny cuttable network and a graph builder from YAML text.

``KTGRAPH_TEST_DEVICE=cuda`` runs the tests that compare two computations of one plan (batched
against unbatched) on the GPU, with TF32 off so that float32 means float32 there too.
"""
from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from ktgraph.bind import bind
from ktgraph.compile import compile_program
from ktgraph.data import DATASETS
from ktgraph.graph import build_graph
from ktgraph.runtime import Executor
from ktgraph.spec import load_document, parse_yaml
from ktgraph.zoo import is_model, register_model

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("KTGRAPH_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class TinyNet(nn.Module):
    """stem -> block1 -> block2 -> head, with BatchNorm, small enough for exact gradient checks."""

    def __init__(self, num_classes: int, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(width, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                    nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))))

    def ktgraph_stages(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self.stem), ("block1", self.block1), ("block2", self.block2), ("head", self.head)]


if not is_model("tiny_test"):
    register_model(name="tiny_test")(lambda num_classes, width=4: TinyNet(num_classes, width))

NUM_CLASSES = 5
SHAPE = (3, 8, 8)


def load_text(text: str, overrides: tuple[str, ...] = ()):
    """A graph resolved from YAML text."""
    raw, source = parse_yaml(textwrap.dedent(text), "<test>")
    return build_graph(load_document(raw, source, overrides))


class Built:
    """A graph bound, compiled and ready to run (its first stage's plan), from YAML text."""

    def __init__(self, text: str) -> None:
        self.graph = load_text(text)
        torch.manual_seed(0)
        self.bound = bind(self.graph, NUM_CLASSES, SHAPE)
        self.model = self.bound.modules
        self.program = compile_program(self.bound)
        self.plan = self.program.stages[0]
        self.model.set_fixed(self.plan.fixed)
        self.executor = Executor(self.plan, self.model)

    def net(self, name: str) -> nn.Module:
        return self.model.networks[name]

    def grads(self) -> dict[str, torch.Tensor | None]:
        return {n: (p.grad.clone() if p.grad is not None else None) for n, p in self.model.named_parameters()}


@pytest.fixture
def no_loading() -> Iterator[None]:
    """Every registered data set's loader fails the test if it is called."""
    saved = DATASETS.snapshot()

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data set was loaded")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replacing registered loaders warns, on purpose
        for name in list(DATASETS):
            DATASETS.register(name=name, **DATASETS.metadata(name))(no_data)
    yield
    DATASETS.restore(saved)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run on tiny tensors, which gain nothing from threads; on a small, busy machine OpenMP's
    spinning threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, *SHAPE, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (6,), generator=generator)
    return x, y
