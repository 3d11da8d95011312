"""The graph language: a strict pydantic schema of a graph file.

Every section rejects unknown fields (with a did-you-mean hint), so a typo can never
silently fall back to a default. Cross-references (a link naming a network, a path
naming a segment) are checked later, when the graph is built.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..errors import did_you_mean

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
RESERVED_NAMES = frozenset({"label", "all", "x"})


class Strict(BaseModel):
    """Base of every section: unknown fields are errors that name the closest field."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown field `{field}`",
                        {"field": str(key), "expected": ", ".join(sorted(known)),
                         "suggestion": did_you_mean(str(key), known)},
                    )
        return data


class DataSpec(Strict):
    """Which images to train on and how to augment them."""

    name: Literal["digits", "cifar10", "cifar100", "image_folder"] = "digits"
    root: str | None = None
    image_size: int | None = Field(None, gt=0)
    crop_padding: int | None = Field(None, ge=0)
    flip: bool | None = None
    normalize: bool = True
    val_split: float = Field(0.0, ge=0.0, lt=1.0)
    limit_train: int | None = Field(None, gt=0)
    limit_test: int | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)


class NetworkSpec(Strict):
    """A model from the registry, cut into named parts at module names."""

    model: str
    cuts: list[str] = []
    parts: list[Name] | None = None
    cifar_stem: bool = False
    weights: str | None = None
    frozen: bool = False
    kwargs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _parts_match_cuts(self) -> NetworkSpec:
        if self.parts is not None and len(self.parts) != len(self.cuts) + 1:
            raise ValueError(f"`parts` names {len(self.parts)} parts but {len(self.cuts)} cut(s) make "
                             f"{len(self.cuts) + 1}; give one name per part")
        if self.parts is not None and len(set(self.parts)) != len(self.parts):
            raise ValueError("`parts` has a repeated name")
        return self

    def part_names(self) -> list[str]:
        return list(self.parts) if self.parts else [f"p{i + 1}" for i in range(len(self.cuts) + 1)]


Adapter = Literal["auto", "none", "conv1x1_relu", "conv_bn_relu"]


class PathSpec(Strict):
    """A sequence of segments, possibly from different networks (a cross path)."""

    segments: list[str] = Field(min_length=1)
    adapter: Adapter = "auto"

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        return {"segments": data} if isinstance(data, list) else data


class CrossSpec(Strict):
    """Generates cross paths: ``xml`` swaps network at a cut, ``all`` makes all K^P paths."""

    kind: Literal["xml", "all"]
    networks: list[Name] = Field(min_length=2)
    cut: list[str] | None = None
    adapter: Adapter = "auto"

    @field_validator("cut", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class MeanAggregator(Strict):
    """Mean of the inputs' logits (an ensemble, or a peer-mean target)."""

    kind: Literal["mean"]
    inputs: list[str] = Field(min_length=1)


class AttentionAggregator(Strict):
    """OKDDip attention: target t_a = sum_b softmax_b(<W_L h_a, W_E h_b>) z_b over the inputs."""

    kind: Literal["attention"]
    inputs: list[str] = Field(min_length=2)
    features: list[str] = Field(min_length=2)
    reduction: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _aligned(self) -> AttentionAggregator:
        if len(self.inputs) != len(self.features):
            raise ValueError("`features` needs one feature per input (the pooled feature of that peer)")
        return self


AggregatorSpec = Annotated[Union[MeanAggregator, AttentionAggregator], Field(discriminator="kind")]

GateKind = Literal["through", "cutoff", "linear", "correct", "ramp"]


class GateSpec(Strict):
    """How a link's per-sample losses become its value over training."""

    kind: GateKind = "through"
    length: int = Field(80, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _length_for_ramp(self) -> GateSpec:
        if self.kind != "ramp" and self.length != 80:
            raise ValueError(f"`length` (epochs of the ramp) applies to the ramp gate only, not `{self.kind}`")
        return self


class LinkBase(Strict):
    name: str | None = None
    target: str
    weight: float = 1.0
    gate: GateSpec = GateSpec()
    trains: list[str] | None = None
    each: dict[Name, list[str]] | None = None
    distinct: bool = True


class CELink(LinkBase):
    """Cross-entropy of the target's logits against the label."""

    kind: Literal["ce"]
    source: Literal["label"] = "label"


class KLLink(LinkBase):
    """T^2 * batchmean KL(softmax(source/T) || softmax(target/T))."""

    kind: Literal["kl"]
    source: str
    T: float = Field(1.0, gt=0)
    detach: bool = True


class MimicLink(LinkBase):
    """Feature mimic between segment outputs, through a regressor when shapes differ."""

    kind: Literal["mimic"]
    source: str
    loss: Literal["mse", "l1", "cosine"] = "mse"
    adapter: Adapter = "auto"
    detach: bool = True


LinkSpec = Annotated[Union[CELink, KLLink, MimicLink], Field(discriminator="kind")]


class OptimizerSpec(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

    @model_validator(mode="after")
    def _fields_of_this_optimizer(self) -> OptimizerSpec:
        if self.name == "adamw" and (self.nesterov or self.momentum != 0.9):
            raise ValueError("`momentum` and `nesterov` apply to sgd; adamw uses `betas`")
        if self.name == "sgd" and self.betas != (0.9, 0.999):
            raise ValueError("`betas` apply to adamw; sgd uses `momentum`")
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0")
        return self


class ScheduleSpec(Strict):
    name: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _fields_of_this_schedule(self) -> ScheduleSpec:
        if self.name != "multistep" and (self.milestones or self.gamma != 0.1):
            raise ValueError(f"`milestones` and `gamma` apply to the multistep schedule, not `{self.name}`")
        if self.name != "cosine" and self.min_lr:
            raise ValueError(f"`min_lr` applies to the cosine schedule, not `{self.name}`")
        return self


class TrainSpec(Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    update: Literal["simultaneous", "alternating"] = "simultaneous"
    bn_stats: Literal["own", "all"] = "own"
    tensorboard: bool = False
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()

    @field_validator("amp", mode="before")
    @classmethod
    def _bool_amp(cls, value: Any) -> Any:
        return {False: "off", True: "bf16"}.get(value, value) if isinstance(value, bool) else value


class StageSpec(Strict):
    """A training stage: which links are active and which networks stay fixed."""

    name: Name
    epochs: int | None = Field(None, gt=0)  # default: train.epochs
    links: list[str] | None = None
    freeze: list[Name] = []


class GraphSpec(Strict):
    """A whole graph file."""

    name: str | None = None
    description: str = ""
    imports: list[str] = []
    data: DataSpec = DataSpec()
    networks: dict[Name, NetworkSpec] = Field(min_length=1)
    paths: dict[Name, PathSpec] = {}
    crosses: list[CrossSpec] = []
    aggregators: dict[Name, AggregatorSpec] = {}
    links: list[LinkSpec] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    stages: list[StageSpec] = []

    @field_validator("networks", "paths", "aggregators")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in RESERVED_NAMES:
                raise ValueError(f"`{key}` is reserved; choose another name")
        return value
