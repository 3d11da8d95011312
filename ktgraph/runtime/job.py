"""A job: a graph with its data, its modules and its program, built once for everything a run does.

:func:`prepare` binds and compiles exactly once; the trainer, the Xross table, ``pick`` and the
report all read the job's program. Without data (``ktgraph plan``, ``render``, ``validate``),
the number of classes and the image size come from the file or the data set's registration.
A trainable module that no stage trains is named in an :class:`~ktgraph.errors.UntrainedModuleWarning`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

from ..bind import BoundGraph, GraphModules, bind
from ..compile import Plan, Program, compile_program, untrained
from ..compile.pipeline import Trace
from ..data import DataBundle, build_data, data_info
from ..errors import GraphError, UntrainedModuleWarning
from ..graph import AdapterId, AggregatorId, KTGraph, RegressorId, RunWeights
from ..kinds import GateContext
from .executor import Executor
from .rundir import RunDir
from .strategy import Local, local_device as resolve_device


@dataclass
class Job:
    graph: KTGraph
    bound: BoundGraph
    program: Program
    data: DataBundle | None
    device: torch.device

    @property
    def modules(self) -> GraphModules:
        return self.bound.modules

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.bound.input_shape


def prepare(graph: KTGraph, *, with_data: bool = True, device: str | torch.device | None = None,
            trace: Trace | None = None, strategy: Local | None = None, initial_weights: bool = True) -> Job:
    """Load the data (unless ``with_data`` is false), bind the graph and compile its program, once.

    ``trace`` sees every plan after lowering and after each pass (``ktgraph plan --passes``).
    Under a distributed ``strategy`` the modules go to its device, ``train.sync_bn`` converts
    their BatchNorms before anything binds to them, and rank 0's initial weights reach every rank.
    ``initial_weights=False`` reads no ``weights:`` file or run: for a job whose checkpoint replaces
    every weight (resume, eval, pick), so those files need not exist any more.
    """
    world = strategy.world if strategy is not None else 1
    try:
        if device is None and strategy is not None:
            device = strategy.device
        target = torch.device(device) if device is not None else resolve_device(graph.train.device)
        if target.type == "cpu":
            # Subnormal floats (common once images have flat backgrounds) make CPU convolutions
            # tens of times slower; flushing them changes nothing measurable.
            torch.set_flush_denormal(True)
        torch.manual_seed(graph.train.seed)
        data = build_data(graph.data, graph.train.seed, dtype_of(graph)) if with_data else None
        info = data.info if data is not None else data_info(graph.data)
    except GraphError as err:
        raise graph.locate(err) from None
    if not initial_weights:
        graph = graph.without_weights()
    bound = bind(graph, info.num_classes, (info.in_channels, info.image_size, info.image_size), device=target.type,
                 sync_bn=graph.train.sync_bn and world > 1, weights=read_weights(graph))
    program = compile_program(bound, trace=trace)
    dry_run(program, bound)
    warn_untrained(program, bound)
    bound.modules.to(target, dtype_of(graph))
    if strategy is not None:
        strategy.broadcast_module(bound.modules)
    return Job(graph, bound, program, data, target)


def dtype_of(graph: KTGraph) -> torch.dtype:
    """The floating-point type of the modules and the images (``train.dtype``)."""
    return getattr(torch, graph.train.dtype)


def warn_untrained(program: Program, bound: BoundGraph) -> None:
    """Warn, naming every trainable module that no link of any stage trains (its weights would stay as
    initialised)."""
    left = untrained(program, bound)
    if not left:
        return
    kinds = {AdapterId: "adapter", AggregatorId: "aggregator", RegressorId: "regressor"}
    names = ", ".join(f"{o} ({kinds.get(type(o), 'segment')})" for o in left)
    source = bound.graph.source
    place = source.file if source is not None else bound.graph.name or "<graph>"
    hints = ["add the module to a link's `trains`"]
    if any(isinstance(o, AdapterId) for o in left):
        hints.append("an adapter is trained by the links whose target path crosses it that leave `trains` out, "
                     "or whose `trains` names it or a segment next to it (unless they set `train_adapters: false`)")
    if any(type(o) not in kinds for o in left):
        hints.append("a network that only teaches can say so with `frozen: true`")
    warnings.warn(UntrainedModuleWarning(
        f"{place}: trained by no link of any stage, so their weights stay as initialised: {names}"
        + "".join(f"\n  hint: {h}" for h in hints)), stacklevel=3)


def read_weights(graph: KTGraph) -> dict[str, dict[str, torch.Tensor]]:
    """The state of every network whose ``weights:`` name a network of an earlier run."""
    weights = {}
    for name, net in graph.networks.items():
        if isinstance(net.weights, RunWeights):
            try:
                weights[name] = RunDir(net.weights.run).network_state(net.weights.network, net.weights.checkpoint)
            except GraphError as err:
                err.file, err.line = None, None
                err.message = f"weights from run `{net.weights.run}`: {err.message}"
                err.where = ("networks", name, "weights")
                raise graph.locate(err) from None
    return weights


def dry_run(program: Program, bound: BoundGraph) -> None:
    """Run every plan of the program once on a tiny batch, so a mismatch is a graph error before training."""
    x = torch.zeros(2, *bound.input_shape)
    labels = torch.zeros(2, dtype=torch.long)
    modules = bound.modules
    was_training = modules.training
    modules.eval()
    try:
        with torch.no_grad():
            for plan in (*program.stages, program.eval):
                _probe(plan, modules, x, labels)
    finally:
        modules.train(was_training)


def _probe(plan: Plan, modules: GraphModules, x: torch.Tensor, labels: torch.Tensor) -> None:
    executor = Executor(replace(plan, compile=False), modules)  # torch.compile waits for the real batches
    try:
        values = executor.forward(x, labels, GateContext())
        executor.losses(values, labels, GateContext())
    except Exception as err:  # any failure of user-chosen code is a graph error, not a traceback
        raise GraphError(f"the graph fails a dry run on a {tuple(x.shape)} input: {type(err).__name__}: {err}",
                         suggestion="check the shapes of paths and aggregator inputs (`ktgraph plan` lists "
                                    "every step)") from None
