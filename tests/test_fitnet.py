"""graphs/fitnet.yaml, as shipped, against METHODS.md's FitNet hints written here in plain PyTorch.

The regressor maps the student's guided map (16×16×16) to the teacher's hint (32×8×8): a 3×3
convolution of stride 2, BatchNorm (batch statistics in training) and ReLU, recomputed here with
``torch.nn.functional`` from copies of its parameters. Stage ``hint`` must train exactly the
student's guided part and the regressor; stage ``kd`` is KD with α = 0.9, T = 4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ktgraph.graph import RegressorId, SegmentId
from ktgraph.kinds import GateContext
from test_graphs import Link, Reference, _head, _stem, kl, load_job, make_batch, prepared, segs, step

GUIDED_TOP = (  # the student's cut (after layer1); the teacher's own forward is written below
    ("guided", ("conv1", "bn1", "layer1"), lambda n, v: n.layer1(_stem(n, v))),
    ("top", ("layer2", "layer3", "fc"), lambda n, v: _head(n, n.layer3(n.layer2(v)))),
)


def teacher_hint(net: nn.Module, x: Tensor) -> Tensor:
    """The teacher's stem, layer1 and layer2 (its `hint` part), in eval mode: it is frozen."""
    return net.layer2(net.layer1(_stem(net, x)))


def regressor(params: dict[str, Tensor], v: Tensor) -> Tensor:
    conv = F.conv2d(v, params["0.weight"], stride=2, padding=1)
    normed = F.batch_norm(conv, None, None, params["1.weight"], params["1.bias"], training=True, eps=1e-5)
    return F.relu(normed)


def test_hint_stage_trains_only_the_guided_part_and_the_regressor():
    job = load_job("fitnet")
    assert [p.stage.name for p in job.program.stages] == ["teacher", "hint", "kd"]
    rid = RegressorId("student.guided", "teacher.hint")
    module = job.modules.regressors[rid.key]
    assert isinstance(module[0], nn.Conv2d) and module[0].stride == (2, 2) and module[0].kernel_size == (3, 3)
    plan = prepared(job, 1)
    assert plan.fixed == frozenset({"teacher"})
    x, y = make_batch()
    ref = Reference(job.modules, GUIDED_TOP, fixed=frozenset({"teacher"}))
    params = ref.add_module(rid, f"regressors.{rid.key}", module)
    hint = teacher_hint(ref.nets["teacher"], x).detach()
    guided = ref.segment("student", "guided", x, update=True)
    assert guided.shape[1:] == (16, 16, 16) and hint.shape[1:] == (32, 8, 8)
    mapped = regressor(params, guided)
    loss = ((mapped - hint) ** 2).mean()  # MSE, the mean over all elements
    links = {"mimic:teacher.hint->student.guided": Link(loss, segs("student.guided") | {rid}, "student.guided")}
    out = step(job, plan, x, y, GateContext(), ref, links)
    trained = {n for n, g in out["grads"].items() if g is not None and torch.count_nonzero(g) > 0}
    assert trained and all(n.startswith(f"regressors.{rid.key}.") or n.split(".")[2] in ("conv1", "bn1", "layer1")
                           for n in trained if n.startswith(("networks.", "regressors.")))
    assert not any(n.startswith("networks.teacher.") or n.split(".")[2] in ("layer2", "layer3", "fc")
                   for n in trained if n.startswith("networks."))
    assert any(n.startswith(f"regressors.{rid.key}.") for n in trained)


def test_kd_stage():
    job = load_job("fitnet")
    plan = prepared(job, 2)
    assert plan.fixed == frozenset({"teacher"})
    x, y = make_batch(2)
    ref = Reference(job.modules, GUIDED_TOP, fixed=frozenset({"teacher"}))
    teacher = ref.nets["teacher"]
    zt = _head(teacher, teacher.layer3(teacher_hint(teacher, x)))
    zs = ref.path(["student", "student"], x, own=True)
    student = frozenset({SegmentId("student", "guided"), SegmentId("student", "top")})
    links = {"ce:student": Link(0.1 * F.cross_entropy(zs, y), student, "student"),
             "kl:teacher->student": Link(0.9 * kl(zt, zs, T=4.0), student, "student")}
    step(job, plan, x, y, GateContext(), ref, links)
