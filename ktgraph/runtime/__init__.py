"""Running a program: the executor, the trainer, evaluation, measurement, checkpoints and the run directory."""
from .evaluate import evaluate, make_loader
from .executor import Executor
from .job import Job, dry_run, prepare, resolve_device
from .rundir import RunDir
from .trainer import Trainer

__all__ = ["Executor", "Job", "RunDir", "Trainer", "dry_run", "evaluate", "make_loader", "prepare", "resolve_device"]
