"""The ``data`` and ``train`` sections of a graph file: what the data loaders and the trainer read.

The language validates them (strictly, like every section); the resolved graph carries them
to the runtime as they are, so the runtime reads settings, never the parsed file.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from .config import Strict, choice_error
from .data import DATASETS


MAX_IMAGE_SIZE = 4096
MAX_BATCH = 65536
MAX_SEED = 2**32 - 1  # torch seeds any 64-bit number; per-epoch seeds are derived from this one
MAX_SEEDS = 1000
MAX_THREADS = 4096


def _dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise choice_error("dataset", name, DATASETS.list())
    return name


class DataSettings(Strict):
    """Which images to train on and how to augment them."""

    name: Annotated[str, AfterValidator(_dataset_name)] = "digits"
    root: str | None = None
    image_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE)
    crop_padding: int | None = Field(None, ge=0, le=MAX_IMAGE_SIZE)
    flip: bool | None = None
    normalize: bool = True
    val_split: float = Field(0.0, ge=0.0, lt=1.0)
    limit_train: int | None = Field(None, gt=0)
    limit_test: int | None = Field(None, gt=0)
    num_classes: int | None = Field(None, gt=0, le=100_000)  # read from the data when unset
    num_workers: int = Field(0, ge=0, le=256)
    on_bad_image: Literal["error", "skip"] = "error"  # an image file that cannot be read

    @model_validator(mode="after")
    def _padding_within_image(self) -> DataSettings:
        if self.image_size is not None and self.crop_padding is not None and self.crop_padding > self.image_size:
            raise ValueError(f"`crop_padding` {self.crop_padding} is larger than the image ({self.image_size}): "
                             "every crop would be mostly padding")
        return self



class OptimizerSettings(Strict):
    """``train.optimizer``; a stage's ``optimizer`` is merged over it (:func:`overridden`)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)

    @model_validator(mode="after")
    def _fields_of_this_optimizer(self) -> OptimizerSettings:
        if self.name == "adamw" and (self.nesterov or self.momentum != 0.9):
            raise ValueError("`momentum` and `nesterov` apply to sgd; adamw uses `betas`")
        if self.name == "sgd" and self.betas != (0.9, 0.999):
            raise ValueError("`betas` apply to adamw; sgd uses `momentum`")
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0")
        return self

    def torch_args(self) -> dict[str, Any]:
        """The hyperparameters this optimizer reads, as torch names them (a parameter group's keys but `params`)."""
        if self.name == "sgd":
            return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                    "weight_decay": self.weight_decay}
        return {"lr": self.lr, "betas": self.betas, "weight_decay": self.weight_decay}


# What a network's own `optimizer` may set: the fields torch keeps per parameter group.
NETWORK_FIELDS = frozenset({"lr", "weight_decay", "momentum", "betas"})


class ScheduleSettings(Strict):
    """``train.schedule``; a stage's ``schedule`` is merged over it (:func:`overridden`)."""

    name: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[Annotated[int, Field(gt=0)]] = []
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _fields_of_this_schedule(self) -> ScheduleSettings:
        if self.name != "multistep" and (self.milestones or self.gamma != 0.1):
            raise ValueError(f"`milestones` and `gamma` apply to the multistep schedule, not `{self.name}`")
        if self.name != "cosine" and self.min_lr:
            raise ValueError(f"`min_lr` applies to the cosine schedule, not `{self.name}`")
        return self


def overridden(base: OptimizerSettings | ScheduleSettings, given: dict[str, Any]) -> dict[str, Any]:
    """A stage's partial ``optimizer`` or ``schedule`` over the train section's, to be validated as a whole.

    The fields given replace the base's; a ``name`` other than the base's starts from that name's
    defaults instead, so a stage that switches sgd to adamw inherits no sgd field (nor lr or
    weight decay: what the stage does not write is the new optimizer's default).
    """
    start = base.model_dump() if given.get("name", base.name) == base.name else {}
    return {**start, **given}


class CalibrateSettings(Strict):
    """Re-estimating BatchNorm statistics for the paths that read another network's features.

    A down-half's running statistics describe its own network's features; fed another
    network's (a cross path), they do not, and the path is evaluated with the wrong
    normalisation. Before such a path is evaluated its statistics are re-estimated on
    ``batches`` training batches (see ``runtime/calibrate.py``); the trained model is untouched.
    """

    paths: Literal["cross", "all", "none"] = "cross"  # which segment calls get their own statistics
    batches: int = Field(20, gt=0, le=100_000)
    split: Literal["train", "val"] = "train"
    every_epoch: bool = True  # also before each epoch's evaluation (else only the final table)


class TrainSettings(Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    eval_batch_size: int = Field(256, gt=0, le=MAX_BATCH)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # A seed group: one run per seed (train.seed set to each), summarised as mean ± std (app/seeds.py).
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(None, min_length=1, max_length=MAX_SEEDS)
    threads: int | None = Field(None, gt=0, le=MAX_THREADS)  # intra-op threads; None: torch's choice
    keep_checkpoints: int = Field(1, ge=1, le=1000)  # epochs whose checkpoint is kept (1: checkpoints/last.pt only)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    dtype: Literal["float32", "float64"] = "float32"  # float64: for exactness checks, not for speed
    update: Literal["simultaneous", "alternating"] = "simultaneous"
    bn_stats: Literal["own", "all"] = "own"
    batching: Literal["auto", "off", "inputs", "peers", "all"] = "auto"
    compile: bool = False
    sync_bn: bool = False  # under several processes: BatchNorm statistics over the global batch
    calibrate: CalibrateSettings = CalibrateSettings()
    tensorboard: bool = False
    optimizer: OptimizerSettings = OptimizerSettings()
    schedule: ScheduleSettings = ScheduleSettings()

    @model_validator(mode="after")
    def _amp_in_float32(self) -> TrainSettings:
        if self.dtype == "float64" and self.amp != "off":
            raise ValueError("`amp` mixes float16 into float32 training; with `dtype: float64` set amp: off")
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("`seeds` names a seed twice; a seed group runs each seed once")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _bool_amp(cls, value: Any) -> Any:
        return {False: "off", True: "bf16"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("calibrate", mode="before")
    @classmethod
    def _bool_calibrate(cls, value: Any) -> Any:
        """``calibrate: false`` turns calibration off, ``true`` keeps the defaults."""
        return {False: {"paths": "none"}, True: {}}.get(value, value) if isinstance(value, bool) else value

    @field_validator("batching", mode="before")
    @classmethod
    def _bool_batching(cls, value: Any) -> Any:
        """YAML reads a bare `off` as false."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value
