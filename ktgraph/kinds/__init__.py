"""The registered units a graph file names by ``kind``: link kinds (losses), gates, aggregators, adapters.

Each family is a :class:`~ktgraph.registry.Registry`; ``register_link``, ``register_gate``,
``register_aggregator`` and ``register_adapter`` add to them (from a module listed under
``imports:``, for instance), and the graph-file schema is built from what is registered.
"""
from .adapters import (ADAPTERS, AUTO, NONE, Adapter, AdapterChoice, adapter_hint, adapter_label, leading_conv,
                       make_adapter, register_adapter)
from .aggregators import AGGREGATORS, AggregatorInput, AggregatorKind, register_aggregator
from .base import EpochInfo, HeldOut, Unit
from . import branches as _branches  # noqa: F401  (registers ONE's gate and CL-ILR's target)
from . import kdcl as _kdcl  # noqa: F401  (registers KDCL's teachers)
from .gates import GATES, Gate, GateContext, ramp_weight, register_gate
from .losses import LINKS, LinkInput, LinkKind, correct_mask, register_link

__all__ = ["ADAPTERS", "AGGREGATORS", "AUTO", "GATES", "LINKS", "NONE", "Adapter", "AdapterChoice", "AggregatorInput",
           "AggregatorKind", "EpochInfo", "Gate", "GateContext", "HeldOut", "LinkInput", "LinkKind", "Unit",
           "adapter_hint", "adapter_label", "leading_conv", "correct_mask", "make_adapter", "ramp_weight", "register_adapter",
           "register_aggregator", "register_gate", "register_link"]
