"""Batched plans against the per-network loop and the hand-written step, measured side by side.

Cases (``--case``), each one full training step (forward, losses, backward, SGD step) of
CIFAR ResNet-20s (100 classes, 32x32 inputs, random data from a fixed seed):

* ``dml4``: a DML cohort of K = 4 identical networks (CE + mean KL from the detached peers);
* ``xml2``, ``xml4``: XML with K = 2 or 4 networks cut after ``layer2`` (METHODS.md's loss, every
  weight 1/(2(K-1))).

Variants, each on its own copy of the same initial weights:

* ``loop``: the per-network loop as distillation code often writes it: for each network, every
  path its loss reads is recomputed from the image, the peers' under ``no_grad`` (K² forwards);
* ``hand``: the hand-written step: every path once, each network's loss back-propagated into its
  own parameters (``backward(inputs=...)``), cross calls keeping their BatchNorm statistics;
* ``off``, ``inputs``, ``peers``, ``all``: ktgraph's compiled plan with that ``train.batching``
  (``--batching``): per-network calls, or fused calls with per-group or one routed backward as
  the compiler decides; ``auto`` is ``off`` on the CPU, so it is not timed separately there.

The first batch checks that every variant computes the same losses and gradients. Timed steps
are interleaved, the order rotated every round; the table gives each variant's median and IQR,
its median paired ratio to ``loop`` and to ``hand`` (with quartiles), and FLOPs per step counted
by ``FlopCounterMode`` (noise-free). ``--compile`` adds ``off`` with ``train.compile: true``
(its compile time is reported apart, not timed).

    python benchmarks/batching.py --case dml4 --threads 1
    python benchmarks/batching.py --case xml4 --steps 15 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ktgraph.graph import load_graph
from ktgraph.kinds import GateContext
from ktgraph.runtime import Executor, prepare

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES, SHAPE = 100, (3, 32, 32)


def graph_file(case: str, tmp: Path) -> Path:
    k = int(case[-1])
    nets = [f"n{i + 1}" for i in range(k)]
    names = ", ".join(nets)
    if case.startswith("dml"):
        text = (f"networks: {{{', '.join(f'{n}: {{model: resnet20}}' for n in nets)}}}\n"
                f"links:\n  - {{kind: ce, each: {{i: [{names}]}}, target: '{{i}}'}}\n"
                f"  - {{kind: kl, each: {{i: [{names}], j: [{names}]}}, source: '{{j}}', target: '{{i}}', "
                f"weight: {1 / (k - 1)}}}\n")
    else:
        w, each = 1 / (2 * (k - 1)), f"{{i: [{names}], j: [{names}]}}"
        text = ("networks:\n" + "".join(f"  {n}: {{model: resnet20, cuts: [layer2], parts: [up, down]}}\n"
                                        for n in nets)
                + f"crosses: [{{kind: xml, networks: [{names}], cut: up}}]\nlinks:\n"
                f"  - {{kind: ce, each: {{i: [{names}]}}, target: '{{i}}', weight: {w}}}\n"
                f"  - {{kind: kl, each: {each}, source: '{{j}}', target: '{{i}}', weight: {w / (k - 1)}}}\n"
                + "".join(f"  - {{kind: {kind}, each: {each}, name: '{tag}:{{i}}-{{j}}', "
                          + ("source: '{j}', " if kind == "kl" else "")
                          + f"target: '{path}', trains: ['{{i}}.{part}'], weight: {w}}}\n"
                          for tag, kind, path, part in (("uk", "kl", "{i}-{j}", "up"), ("uc", "ce", "{i}-{j}", "up"),
                                                        ("dk", "kl", "{j}-{i}", "down"),
                                                        ("dc", "ce", "{j}-{i}", "down"))))
    path = tmp / f"{case}.yaml"
    path.write_text(text + "data: {name: cifar100}\n")
    return path


class PlanStep:
    def __init__(self, file: Path, batching: str, device: torch.device, compiled: bool = False) -> None:
        graph = load_graph(file, [f"train.batching={batching}", f"train.compile={str(compiled).lower()}",
                                  "data.num_classes=100"])
        torch.manual_seed(0)
        self.job = prepare(graph, with_data=False, device=device)
        self.plan = self.job.program.stages[0]
        self.job.modules.set_fixed(self.plan.fixed)
        self.job.modules.train()
        self.ex = Executor(self.plan, self.job.modules)
        self.opt = torch.optim.SGD([p for p in self.job.modules.parameters() if p.requires_grad], lr=0.1, momentum=0.9)

    def networks(self) -> list[nn.Module]:
        return list(self.job.modules.networks.values())

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        ctx = GateContext()
        losses = self.ex.losses(self.ex.forward(x, y, ctx), y, ctx)
        self.opt.zero_grad(set_to_none=True)
        self.ex.backward(losses)
        return torch.stack(list(losses.values())).sum().detach()


# --- hand-written PyTorch ------------------------------------------------------------------------------
def kl(teacher: Tensor, student: Tensor) -> Tensor:
    return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher.detach(), 1), reduction="batchmean",
                    log_target=True)


def up(net: nn.Module, x: Tensor) -> Tensor:
    return net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x)))))


def down(net: nn.Module, h: Tensor, own: bool = True) -> Tensor:
    norms = [m for m in net.layer3.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:  # a cross call normalises with batch statistics and keeps the running ones
        m.track_running_stats = own
    try:
        return net.forward_head(net.layer3(h))
    finally:
        for m in norms:
            m.track_running_stats = True


class HandStep:
    def __init__(self, nets: list[nn.Module], case: str, naive: bool) -> None:
        self.nets = [copy.deepcopy(n) for n in nets]
        self.params = [list(n.parameters()) for n in self.nets]
        self.opt = torch.optim.SGD([p for ps in self.params for p in ps], lr=0.1, momentum=0.9)
        self.case, self.naive = case, naive
        self.k = len(nets)

    def networks(self) -> list[nn.Module]:
        return self.nets

    def dml_loss(self, i: int, z: list[Tensor], y: Tensor) -> Tensor:
        return F.cross_entropy(z[i], y) + sum(kl(z[j], z[i]) for j in range(self.k) if j != i) / (self.k - 1)

    def xml_loss(self, i: int, path: Callable[[int, int], Tensor], y: Tensor) -> Tensor:
        k, peers = self.k, [j for j in range(self.k) if j != i]
        total = F.cross_entropy(path(i, i), y) + sum(kl(path(j, j), path(i, i)) for j in peers) / (k - 1)
        for j in peers:
            total = total + kl(path(j, j), path(i, j)) + F.cross_entropy(path(i, j), y)
            total = total + kl(path(j, j), path(j, i)) + F.cross_entropy(path(j, i), y)
        return total / (2 * (k - 1))

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        nets, k = self.nets, self.k
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros(())
        if self.case.startswith("dml") and self.naive:
            for i in range(k):  # network i's loss, its peers recomputed without gradients
                with torch.no_grad():
                    z = [nets[j](x) if j != i else None for j in range(k)]
                z[i] = nets[i](x)
                loss = self.dml_loss(i, z, y)
                loss.backward()
                total = total + loss.detach()
        elif self.case.startswith("dml"):
            z = [n(x) for n in nets]
            losses = [self.dml_loss(i, z, y) for i in range(k)]
            for i, loss in enumerate(losses):
                loss.backward(inputs=self.params[i], retain_graph=i < k - 1)
                total = total + loss.detach()
        elif self.naive:
            for i in range(k):  # student i: every path it reads, recomputed from the image
                cache: dict[tuple[int, int], Tensor] = {}

                def path(a: int, b: int) -> Tensor:
                    if (a, b) not in cache:
                        cache[(a, b)] = down(nets[b], up(nets[a], x), own=a == b)
                    return cache[(a, b)]

                loss = self.xml_loss(i, path, y)
                loss.backward(inputs=self.params[i])
                total = total + loss.detach()
        else:
            h = [up(n, x) for n in nets]
            z = {(a, b): down(nets[b], h[a], own=a == b) for a in range(k) for b in range(k)}
            losses = [self.xml_loss(i, lambda a, b: z[(a, b)], y) for i in range(k)]
            for i, loss in enumerate(losses):
                loss.backward(inputs=self.params[i], retain_graph=i < k - 1)
                total = total + loss.detach()
        return total


# --- measuring ----------------------------------------------------------------------------------------------
def step(variant, x: Tensor, y: Tensor) -> Tensor:
    loss = variant.forward_backward(x, y)
    variant.opt.step()
    return loss


def check(variants: dict, x: Tensor, y: Tensor) -> str:
    losses, grads = {}, {}
    for name, variant in variants.items():
        losses[name] = variant.forward_backward(x, y).item()
        grads[name] = [p.grad for n in variant.networks() for p in n.parameters()]
    worst = 0.0
    for name in variants:
        for g, r in zip(grads[name], grads["hand"]):
            if g is not None and r is not None:
                worst = max(worst, ((g - r).abs().max() / (r.abs().max() + 1e-12)).item())
    spread = max(losses.values()) - min(losses.values())
    return f"first batch: total losses agree to {spread:.1e}; gradients to {worst:.1e} (relative, against hand)"


def flops(variant, x: Tensor, y: Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        variant.forward_backward(x, y)
    return counter.get_total_flops()


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("dml4", "xml2", "xml4"), default="dml4")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batching", default="off,inputs,all",
                        help="the train.batching values to time, comma-separated (off is always timed)")
    parser.add_argument("--compile", action="store_true", help="also time the plan with train.compile: true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tmp = tempfile.TemporaryDirectory()
    file = graph_file(args.case, Path(tmp.name))

    batchings = ["off"] + [b for b in args.batching.split(",") if b and b != "off"]
    variants: dict = {b: PlanStep(file, b, device) for b in batchings}
    variants["hand"] = HandStep(variants["off"].networks(), args.case, naive=False)
    variants["loop"] = HandStep(variants["off"].networks(), args.case, naive=True)
    for name in [*batchings[1:], "hand", "loop"]:
        for mine, ref in zip(variants[name].networks(), variants["off"].networks()):
            mine.load_state_dict(ref.state_dict())
    compile_seconds = None
    if args.compile:
        variants["off+compile"] = PlanStep(file, "off", device, compiled=True)
        variants["off+compile"].job.modules.load_state_dict(variants["off"].job.modules.state_dict())

    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, *SHAPE, generator=gen).to(device),
                torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(device))
               for _ in range(2 + args.warmup + args.steps)]
    print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}, device {device}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, case {args.case}, python {sys.version.split()[0]}")
    for name in batchings[1:]:
        fused = variants[name].plan
        print(f"batching {name}: {len(fused.steps)} steps (unbatched {len(variants['off'].plan.steps)}), backward "
              f"{fused.backward}; " + "; ".join(n for n in fused.notes if n.startswith(("fuse", "choose"))))
    print(check({k: v for k, v in variants.items() if k != "off+compile"}, *batches[0]))
    counts = {name: flops(v, *batches[1]) for name, v in variants.items() if name != "off+compile"}
    if args.compile:
        started = time.perf_counter()
        step(variants["off+compile"], *batches[1])
        compile_seconds = time.perf_counter() - started
    for x, y in batches[2:2 + args.warmup]:
        for variant in variants.values():
            step(variant, x, y)
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i, (x, y) in enumerate(batches[2 + args.warmup:]):
        order = names[i % len(names):] + names[:i % len(names)]  # rotated every round
        for name in order:
            sync()
            started = time.perf_counter()
            step(variants[name], x, y)
            sync()
            times[name].append(time.perf_counter() - started)

    print(f"\n{args.steps} timed steps each, interleaved, order rotated (seconds per step)")
    print(f"{'variant':<13}{'median':>9}{'IQR':>8}{'vs loop (q1, q3)':>25}{'vs hand (q1, q3)':>25}{'GFLOP':>9}")
    for name in names:
        med = statistics.median(times[name])
        q1, _, q3 = quartiles(times[name])
        row = f"{name:<13}{med:>9.3f}{q3 - q1:>8.3f}"
        for base in ("loop", "hand"):
            ratios = [b / t for t, b in zip(times[name], times[base])]  # > 1: faster than the base
            r1, r2, r3 = quartiles(ratios)
            row += f"{f'{r2:.3f}x ({r1:.3f}, {r3:.3f})':>25}"
        row += f"{counts[name] / 1e9:>9.1f}" if name in counts else f"{'':>9}"
        print(row)
    if compile_seconds is not None:
        print(f"torch.compile: first step (compiling) took {compile_seconds:.1f} s, not timed above")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
