"""Running graphs: modules, the plan executor, training, evaluation and checkpoints."""
from .evaluate import evaluate, make_loader
from .executor import Executor
from .model import GraphModel
from .run import load_graph, train
from .trainer import Trainer

__all__ = ["Executor", "GraphModel", "Trainer", "evaluate", "load_graph", "make_loader", "train"]
