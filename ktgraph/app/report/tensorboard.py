"""Optional TensorBoard logging of the per-epoch metrics line (``train.tensorboard: true``).

The trainer already writes one dict per epoch to ``metrics.jsonl``; this logger takes
the same dict, so there is one source of numbers::

    logger = TensorBoardLogger(run_dir)     # GraphError when tensorboard is not installed
    ...
    logger.log(line)                         # once per epoch, after the line is written
    ...
    logger.close()

The step of an epoch is its 1-based position among the run's epochs (counted across
stages), the x axis of ``curves.svg``; it is derived from ``metrics.jsonl`` so a resumed
run continues the same axis.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import GraphError
from ...runtime.events import AfterEvaluation, Callback
from ...runtime.rundir import TENSORBOARD, RunDir
INSTALL_HINT = "pip install 'ktgraph[tensorboard]'"

_BAD = re.compile(r"[^-/\w.]")


def tag(*parts: str) -> str:
    """A TensorBoard tag from name parts: characters TensorBoard rejects become ``_``.

    ``kl:net2->net1`` becomes ``kl_net2-_net1``; ``mean(paths)`` becomes ``mean_paths_``.
    """
    return "/".join(_BAD.sub("_", str(p)) for p in parts)


class TensorBoardLogger(Callback):
    """Writes each epoch's scalars to ``run_dir/tensorboard/``.

    Scalars: ``lr``, ``seconds``, ``link/<link>``, ``node_loss/<node>``,
    ``test_top1/<node>``, ``test_top5/<node>`` and ``val_top1/<node>``, ``val_top5/<node>``
    when present.
    """

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard itself is missing (torch is not)
            raise GraphError("train.tensorboard is true but TensorBoard is not installed",
                             where=("train", "tensorboard"), expected="the `tensorboard` package",
                             suggestion=f"{INSTALL_HINT}, or set train.tensorboard=false") from err
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / TENSORBOARD
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._logged = 0  # steps logged by this object, the fallback when metrics.jsonl is absent

    def step_of(self, line: dict[str, Any]) -> int:
        """The epoch's 1-based position across stages: 1 + the earlier epochs in metrics.jsonl."""
        key = (line.get("stage_index", 0), line.get("epoch", 0))
        logged = RunDir(self.run_dir).read_metrics()
        if not logged:
            return self._logged + 1
        return 1 + sum(1 for other in logged if (other.get("stage_index", 0), other.get("epoch", 0)) < key)

    def log(self, line: dict[str, Any]) -> int:
        """Log one metrics line (the dict written to metrics.jsonl); return its step."""
        step = self.step_of(line)
        scalars: dict[str, float] = {}
        for key in ("lr", "seconds"):
            if isinstance(line.get(key), (int, float)):
                scalars[key] = float(line[key])
        for network, value in (line.get("lrs") or {}).items():  # the networks with a parameter group of their own
            scalars[tag("lr", network)] = float(value)
        for name, value in (line.get("links") or {}).items():
            scalars[tag("link", name)] = float(value)
        for node, value in (line.get("node_loss") or {}).items():
            scalars[tag("node_loss", node)] = float(value)
        for split in ("test", "val"):
            for node, acc in (line.get(split) or {}).items():
                for metric in ("top1", "top5"):
                    if isinstance(acc, dict) and isinstance(acc.get(metric), (int, float)):
                        scalars[tag(f"{split}_{metric}", node)] = float(acc[metric])
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()
        self._logged = max(self._logged, step)
        return step

    def after_evaluation(self, event: AfterEvaluation) -> None:
        self.log(event.metrics)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
