"""Models for knowledge-transfer graphs: build any classifier by name, cut it into segments.

Importing this package registers ktgraph's CIFAR networks (``resnet20``, ``wrn28_10``, ...).
"""

from ktgraph.zoo import cifar_resnet as _cifar_resnet  # noqa: F401  (registers the built-ins)
from ktgraph.zoo.cuts import allowed_cuts, split
from ktgraph.zoo.registry import MODELS, check_model, create_model, is_model, list_models, load_state, register_model
from ktgraph.zoo.segment import Segment

__all__ = ["MODELS", "Segment", "allowed_cuts", "check_model", "create_model", "is_model", "list_models", "load_state",
           "register_model", "split"]
