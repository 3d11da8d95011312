"""Compiling: lowering, then the passes, once per stage and once for evaluation.

:func:`compile_program` is the one entry point a run uses; everything that reads a plan (the
trainer, ``ktgraph plan``, ``render``, the Xross table, ``pick``, the report) reads the program
it returns. ``trace`` sees the plan after lowering and after each pass (``ktgraph plan --passes``).
:func:`untrained` lists the trainable modules that no stage's plan trains.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..bind import BoundGraph
from ..graph import AggregatorId, ModuleId, Stage, by_name
from .ir import Plan, Program
from .lower import lower_eval, lower_train
from .passes import EVAL_PASSES, TRAIN_PASSES, Pass

Trace = Callable[[str, Plan], None]


def compile_plan(bound: BoundGraph, stage: Stage | None = None, *, trace: Trace | None = None) -> Plan:
    """The train plan of ``stage``, or the eval plan when ``stage`` is None."""
    if stage is None:
        return run_passes(lower_eval(bound), bound, EVAL_PASSES, trace)
    plan = run_passes(lower_train(bound, stage), bound, TRAIN_PASSES, trace)
    return replace(plan, compile=bound.graph.train.compile)


def run_passes(plan: Plan, bound: BoundGraph, passes: tuple[Pass, ...], trace: Trace | None = None) -> Plan:
    if trace is not None:
        trace("lower", plan)
    for rewrite in passes:
        plan = rewrite(plan, bound)
        if trace is not None:
            trace(rewrite.__name__, plan)
    return plan


def compile_program(bound: BoundGraph, *, trace: Trace | None = None) -> Program:
    """A train plan per stage of the graph and the eval plan."""
    stages = tuple(compile_plan(bound, stage, trace=trace) for stage in bound.graph.stages)
    return Program(stages, compile_plan(bound, trace=trace))


def trainable(bound: BoundGraph) -> set[ModuleId]:
    """Every module with parameters that some stage may train: the segments of networks that not every
    stage freezes (by the file or its ``freeze``), the adapters, aggregators with parameters and regressors."""
    graph = bound.graph
    always_frozen = frozenset.intersection(*(graph.frozen_in(stage) for stage in graph.stages))
    owners: set[ModuleId] = {s for s in graph.segments if s.network not in always_frozen}
    owners |= set(bound.adapters) | set(bound.regressors.values())
    owners |= {AggregatorId(name) for name in bound.modules.aggregators}
    return {o for o in owners if bound.modules.parameters_of([o], trainable=False)}


def untrained(program: Program, bound: BoundGraph) -> list[ModuleId]:
    """The trainable modules that no term of any stage trains, after the passes (what gets gradients)."""
    trained: set[ModuleId] = set()
    for plan in program.stages:
        trained.update(o for term in plan.terms for o in term.trains)
        trained.update(o for group in plan.groups for o in group.trains)
    return by_name(trainable(bound) - trained)
