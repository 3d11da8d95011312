"""Time one XML training step: ktgraph's compiled plan against a hand-written PyTorch step.

Setup (METHODS.md, "Xross Mutual Learning"): two CIFAR-stem torchvision ResNet-18s
(100 classes, 32x32 inputs) cut after ``layer2`` into ``up`` and ``down``, K = 2, the
link set of ``graphs/xml.yaml`` (every weight 1/2). Random data with a fixed seed.

(a) plan: ``bind`` + ``compile_program`` + ``Executor``, one step done as the
    trainer does it: forward, losses, zero_grad, backward (one per gradient group), SGD step.
(b) hand: a second, identically initialised copy of the two networks, the six forwards
    up1, up2, down1(up1), down2(up2), down2(up1), down1(up2) written with the torchvision
    modules, student i's loss written out per METHODS.md, and exact routing by
    ``loss_i.backward(inputs=net_i's parameters)`` (loss_i restricted to net_i's own
    parameters is exactly XML's routing), then the same SGD step.

Before timing, the first batch checks that both compute the same total loss and the
same gradients (max abs diff < 1e-4), so the timings compare equal work. Steps are
interleaved a, b, a, b, ... after warm-up; each whole step is timed with perf_counter.

    python benchmarks/xml_step.py                     # CPU, 12 timed steps each
    python benchmarks/xml_step.py --device cuda --steps 50
    python benchmarks/xml_step.py --profile 3         # also a torch.profiler table per variant
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ktgraph.graph import load_graph
from ktgraph.bind import bind
from ktgraph.compile import compile_program
from ktgraph.kinds import GateContext
from ktgraph.runtime import Executor
from ktgraph.zoo import create_model

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 100
SHAPE = (3, 32, 32)
OVERRIDES = [
    "networks.net1.model=resnet18", "networks.net1.cifar_stem=true",
    "networks.net2.model=resnet18", "networks.net2.cifar_stem=true",
]


# --- (a) the compiled plan ------------------------------------------------------------------
class PlanStep:
    def __init__(self, device: torch.device) -> None:
        self.graph = load_graph(ROOT / "graphs" / "xml.yaml", OVERRIDES)
        bound = bind(self.graph, NUM_CLASSES, SHAPE)
        self.model = bound.modules.to(device)
        self.model.train()
        self.plan = compile_program(bound).stages[0]
        self.ex = Executor(self.plan, self.model)  # bn_stats="own", the trainer's default
        self.opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        self.ctx = GateContext()

    def networks(self) -> dict[str, nn.Module]:
        return dict(self.model.networks.items())

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        values = self.ex.forward(x, y, self.ctx)
        losses = self.ex.losses(values, y, self.ctx)
        self.opt.zero_grad(set_to_none=True)
        self.ex.backward(losses)
        return sum(losses.values()).detach()

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.forward_backward(x, y)
        self.opt.step()
        return loss


# --- (b) hand-written PyTorch ------------------------------------------------------------------
def up(net: nn.Module, x: Tensor) -> Tensor:
    return net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x)))))  # cifar stem: maxpool is Identity


def down(net: nn.Module, h: Tensor) -> Tensor:
    return net.fc(torch.flatten(net.avgpool(net.layer4(net.layer3(h))), 1))


def kl(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(p_teacher || p_student), batch mean; the teacher is detached."""
    return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher.detach(), 1), reduction="batchmean",
                    log_target=True)


def student_loss(z_i: Tensor, z_j: Tensor, up_mimic_ij: Tensor, down_mimic_ji: Tensor, y: Tensor) -> Tensor:
    """METHODS.md: [CE(z_i) + mean_j KL(p_j||p_i) + sum_j (KL(p_j||up_ij) + KL(p_j||down_ji)
    + CE(up_ij) + CE(down_ji))] / (2(K-1)), with K = 2."""
    return (F.cross_entropy(z_i, y) + kl(z_j, z_i)
            + kl(z_j, up_mimic_ij) + kl(z_j, down_mimic_ji)
            + F.cross_entropy(up_mimic_ij, y) + F.cross_entropy(down_mimic_ji, y)) / 2


class HandStep:
    def __init__(self, source: dict[str, nn.Module], device: torch.device) -> None:
        self.net1, self.net2 = (self._copy(source[name]).to(device).train() for name in ("net1", "net2"))
        self.params1 = list(self.net1.parameters())
        self.params2 = list(self.net2.parameters())
        self.opt = torch.optim.SGD(self.params1 + self.params2, lr=0.1, momentum=0.9)
        # A down-half fed a peer's features normalises with batch statistics but keeps its
        # running statistics for its own features (ktgraph's default, train.bn_stats: own).
        self.down_bns = {id(net): [m for m in (*net.layer3.modules(), *net.layer4.modules())
                                   if isinstance(m, nn.BatchNorm2d)] for net in (self.net1, self.net2)}

    @staticmethod
    def _copy(net: nn.Module) -> nn.Module:
        fresh = create_model("resnet18", NUM_CLASSES, cifar_stem=True)
        fresh.load_state_dict(copy.deepcopy(net.state_dict()))
        return fresh

    def networks(self) -> dict[str, nn.Module]:
        return {"net1": self.net1, "net2": self.net2}

    @contextlib.contextmanager
    def _foreign(self, net: nn.Module):
        bns = self.down_bns[id(net)]
        for m in bns:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in bns:
                m.track_running_stats = True

    def cross(self, net: nn.Module, h: Tensor) -> Tensor:
        with self._foreign(net):
            return down(net, h)

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        net1, net2 = self.net1, self.net2
        h1, h2 = up(net1, x), up(net2, x)
        z1, z2 = down(net1, h1), down(net2, h2)
        z12 = self.cross(net2, h1)  # net1-net2: up-mimic of student 1, down-mimic of student 2
        z21 = self.cross(net1, h2)  # net2-net1: up-mimic of student 2, down-mimic of student 1
        loss1 = student_loss(z1, z2, z12, z21, y)
        loss2 = student_loss(z2, z1, z21, z12, y)
        self.opt.zero_grad(set_to_none=True)
        loss1.backward(inputs=self.params1, retain_graph=True)  # loss_1 trains net1 only
        loss2.backward(inputs=self.params2)                     # loss_2 trains net2 only
        return (loss1 + loss2).detach()

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.forward_backward(x, y)
        self.opt.step()
        return loss


# --- checks and timing ----------------------------------------------------------------------------
@contextlib.contextmanager
def count_backwards():
    """Count torch.autograd.backward calls (Tensor.backward goes through it too)."""
    original, calls = torch.autograd.backward, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    torch.autograd.backward = counted
    try:
        yield calls
    finally:
        torch.autograd.backward = original


def max_diff(a: dict[str, nn.Module], b: dict[str, nn.Module], what: str) -> float:
    worst = 0.0
    for name in a:
        pa, pb = dict(a[name].named_parameters()), dict(b[name].named_parameters())
        assert pa.keys() == pb.keys()
        for key in pa:
            ta, tb = (pa[key], pb[key]) if what == "param" else (pa[key].grad, pb[key].grad)
            assert ta is not None and tb is not None, f"{name}.{key}: no {what}"
            worst = max(worst, (ta - tb).abs().max().item())
    return worst


def check_equal(a: PlanStep, b: HandStep, x: Tensor, y: Tensor, tol: float = 1e-4) -> dict[str, float | int]:
    assert max_diff(a.networks(), b.networks(), "param") == 0.0, "copies are not identical"
    with count_backwards() as calls_a:
        loss_a = a.forward_backward(x, y)
    with count_backwards() as calls_b:
        loss_b = b.forward_backward(x, y)
    loss_diff = (loss_a - loss_b).abs().item()
    grad_diff = max_diff(a.networks(), b.networks(), "grad")
    assert loss_diff < tol, f"total losses differ: {loss_a.item()} vs {loss_b.item()}"
    assert grad_diff < tol, f"gradients differ by {grad_diff}"
    a.opt.step()
    b.opt.step()
    return {"loss": loss_a.item(), "loss_diff": loss_diff, "grad_diff": grad_diff,
            "param_diff_after_step": max_diff(a.networks(), b.networks(), "param"),
            "backwards_a": calls_a[0], "backwards_b": calls_b[0]}


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def profile(name: str, step, batches, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        for x, y in batches:
            step(x, y)
    print(f"\n--- torch.profiler, {name}: {len(batches)} steps, top {rows} ops by self CPU time ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each variant")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant after the check")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=("ab", "abba"), default="ab",
                        help="ab: a, b, a, b, ...; abba: a, b, b, a, a, b, ... (cancels an order bias)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile N more steps of each variant with torch.profiler")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (for quartiles)")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as ktgraph's trainer does on CPU; applies to both variants
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(args.seed)
    a = PlanStep(device)
    b = HandStep(a.networks(), device)

    gen = torch.Generator().manual_seed(args.seed + 1)
    n_batches = 1 + args.warmup + args.steps + args.profile
    batches = [(torch.randn(args.batch, *SHAPE, generator=gen).to(device),
                torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(device)) for _ in range(n_batches)]

    print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}, device {device}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, python {sys.version.split()[0]}")
    print(f"plan: {len(a.plan.steps)} forward steps, {len(a.plan.terms)} loss terms, "
          f"{len(a.plan.groups)} gradient groups")

    check = check_equal(a, b, *batches[0])
    sync()
    print(f"check on batch 1: total loss {check['loss']:.6f}, |loss_a - loss_b| = {check['loss_diff']:.2e}, "
          f"max |grad_a - grad_b| = {check['grad_diff']:.2e}, max |param diff| after the step = "
          f"{check['param_diff_after_step']:.2e}")
    print(f"backward passes per step: (a) plan {check['backwards_a']}, (b) hand {check['backwards_b']}")

    for x, y in batches[1:1 + args.warmup]:
        a.step(x, y)
        b.step(x, y)
    sync()

    times: dict[str, list[float]] = {"a": [], "b": []}
    cpu: dict[str, list[float]] = {"a": [], "b": []}  # process CPU time: robust to other users' load
    last: dict[str, Tensor] = {}
    for i, (x, y) in enumerate(batches[1 + args.warmup:1 + args.warmup + args.steps]):
        pair = (("a", a), ("b", b))
        for key, variant in (pair[::-1] if args.order == "abba" and i % 2 else pair):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            last[key] = variant.step(x, y)
            sync()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)

    order = "a, b, a, b" if args.order == "ab" else "a, b, b, a"
    print(f"\n{args.steps} timed steps each, interleaved {order}, ... (seconds per step)")
    print(f"{'variant':<26}{'median':>10}{'q1':>10}{'q3':>10}{'IQR':>10}{'min':>10}")
    for key, label in (("a", "(a) ktgraph plan"), ("b", "(b) hand-written")):
        q1, med, q3 = quartiles(times[key])
        print(f"{label:<26}{med:>10.4f}{q1:>10.4f}{q3:>10.4f}{q3 - q1:>10.4f}{min(times[key]):>10.4f}")
    print(f"{'  process CPU time':<26}{'median':>10}{'q1':>10}{'q3':>10}{'IQR':>10}{'min':>10}")
    for key, label in (("a", "  (a) ktgraph plan"), ("b", "  (b) hand-written")):
        q1, med, q3 = quartiles(cpu[key])
        print(f"{label:<26}{med:>10.4f}{q1:>10.4f}{q3:>10.4f}{q3 - q1:>10.4f}{min(cpu[key]):>10.4f}")
    ratio = statistics.median(times["a"]) / statistics.median(times["b"])
    paired = statistics.median(ta / tb for ta, tb in zip(times["a"], times["b"]))
    print(f"ratio median(a)/median(b) = {ratio:.3f}   (median of paired a/b ratios: {paired:.3f}; "
          f"min(a)/min(b) = {min(times['a']) / min(times['b']):.3f})")
    print(f"CPU-time ratio median(a)/median(b) = {statistics.median(cpu['a']) / statistics.median(cpu['b']):.3f}")
    print(f"target <= 1.05 (wall-clock medians): {'met' if ratio <= 1.05 else 'NOT met'}")
    if last:
        print(f"total loss at the last timed step: (a) {last['a'].item():.4f}, (b) {last['b'].item():.4f}")

    if args.profile:
        rest = batches[1 + args.warmup + args.steps:]
        profile("(a) ktgraph plan", a.step, rest, 25)
        profile("(b) hand-written", b.step, rest, 25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
