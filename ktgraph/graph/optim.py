"""How each stage optimizes: ``train.optimizer``/``train.schedule`` with the stage's overrides, and the
networks' own parameter groups, each checked by the settings' validators and located in the file.

A network's ``optimizer`` is written for ``train.optimizer``: its fields replace the stage's, except
``lr``, which is scaled by the stage's lr over ``train.optimizer.lr`` (a stage at a tenth of the rate
runs every group at a tenth of its rate).
"""
from __future__ import annotations

from typing import Any

from ..errors import GraphError
from ..settings import OptimizerSettings, ScheduleSettings, TrainSettings, overridden
from ..spec.schema import NetworkSpec
from ..spec.validate import validate_section
from .records import Where

Groups = tuple[tuple[str, OptimizerSettings], ...]


def stage_optimizer(train: TrainSettings, optimizer: dict[str, Any], schedule: dict[str, Any],
                    where: Where) -> tuple[OptimizerSettings, ScheduleSettings]:
    """A stage's effective optimizer and schedule: its partial ones merged over ``train``'s."""
    return (validate_section(OptimizerSettings, overridden(train.optimizer, optimizer), where + ("optimizer",))
            if optimizer else train.optimizer,
            validate_section(ScheduleSettings, overridden(train.schedule, schedule), where + ("schedule",))
            if schedule else train.schedule)


def check_networks(train: TrainSettings, networks: dict[str, NetworkSpec]) -> None:
    """Each network's own optimizer fields, valid with ``train.optimizer`` (before any stage is merged)."""
    for name, spec in networks.items():
        if spec.optimizer:
            validate_section(OptimizerSettings, {**train.optimizer.model_dump(), **spec.optimizer},
                             ("networks", name, "optimizer"))


def network_groups(train: TrainSettings, networks: dict[str, NetworkSpec], stage: str,
                   optimizer: OptimizerSettings) -> Groups:
    """The optimizer of each network with fields of its own, in a stage whose optimizer is ``optimizer``."""
    groups = []
    for name, spec in networks.items():
        if not spec.optimizer:
            continue
        where = ("networks", name, "optimizer")
        try:
            own = validate_section(OptimizerSettings, {**optimizer.model_dump(), **spec.optimizer}, where)
        except GraphError as err:
            err.suggestion = err.suggestion or (f"stage `{stage}` trains with {optimizer.name}: a network's "
                                                "`optimizer` fields must fit every stage's optimizer")
            raise
        scaled = own.lr * optimizer.lr / train.optimizer.lr if "lr" in spec.optimizer else own.lr
        groups.append((name, own.model_copy(update={"lr": scaled})))
    return tuple(groups)
