"""Time and peak memory of the whole detection criterion (assignment included), forward + backward.

    python tools/bench_detection_loss.py                     # CPU, 2 threads, 20 and 200 ground truths per image
    python tools/bench_detection_loss.py --device cuda       # on a GPU
    python tools/bench_detection_loss.py --gts 500 --only detloss --repeats 1   # the memory bound

Input: batch 16 at 640 px (8,400 anchors at strides 8/16/32), 80 classes, reg_max 16; ground truths of 16 to
160 px a side with random classes; head maps drawn so that predicted boxes overlap the objects.

Implementations, interleaved in one loop so they see the same machine state:

* ``detloss``: ``DetectionCriterion(80)`` with its default composite (CIoU 7.5, BCE 0.5, DFL 1.5);
* ``ultralytics``: ``ultralytics.utils.loss.v8DetectionLoss`` when the package is installed
  (``pip install ultralytics``; not a dependency of detloss). Its timing includes concatenating the head maps
  into the layout it takes, which its head does in the same training step.

The values are printed side by side, and the largest relative difference of each term to detloss.
Peak memory is measured for each implementation in a fresh subprocess: on CPU the growth of the peak resident
set (``ru_maxrss``) over the step, on a GPU ``torch.cuda.max_memory_allocated`` over the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

NUM_CLASSES, REG_MAX, STRIDES, IMAGE, BATCH = 80, 16, (8, 16, 32), 640, 16


def make_inputs(num_gt: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for s in STRIDES:
        n = IMAGE // s
        f = torch.randn(BATCH, 4 * REG_MAX + NUM_CLASSES, n, n, generator=g)
        f[:, : 4 * REG_MAX] *= 0.5
        f[:, : 4 * REG_MAX].view(BATCH, 4, REG_MAX, n, n)[:, :, 1:6] += 2.0
        f[:, 4 * REG_MAX :] -= 4.0  # a trained head's background logits
        feats.append(f.to(device))
    targets = []
    for _ in range(BATCH):
        wh = torch.rand(num_gt, 2, generator=g) * 144 + 16
        xy = torch.rand(num_gt, 2, generator=g) * (IMAGE - wh)
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1).to(device),
                "labels": torch.randint(0, NUM_CLASSES, (num_gt,), generator=g).to(device),
            }
        )
    return feats, targets


def build(name: str, device: torch.device):
    """A callable ``(feats, targets) -> (total, (box, cls, dfl))`` for the named implementation."""
    if name == "detloss":
        from detloss.detection import DetectionCriterion

        crit = DetectionCriterion(NUM_CLASSES).to(device)

        def run(feats, targets):
            out = crit(feats, targets)
            return out.total, tuple(out.terms[k] for k in ("box", "cls", "dfl"))

        return run
    if name == "ultralytics":
        from ultralytics.utils.loss import v8DetectionLoss

        head = SimpleNamespace(nc=NUM_CLASSES, reg_max=REG_MAX, stride=torch.tensor(STRIDES, dtype=torch.float32))
        model = torch.nn.Module()
        model.register_parameter("p", torch.nn.Parameter(torch.zeros(1, device=device)))
        model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
        model.model = [head]
        crit = v8DetectionLoss(model, tal_topk=10)

        def run(feats, targets):
            b = feats[0].shape[0]
            x = torch.cat([f.flatten(2) for f in feats], 2)
            preds = {"boxes": x[:, : 4 * REG_MAX], "scores": x[:, 4 * REG_MAX :], "feats": feats}
            boxes = torch.cat([t["boxes"] for t in targets])
            xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / IMAGE
            batch = {
                "batch_idx": torch.cat(
                    [torch.full((len(t["labels"]),), i, device=device) for i, t in enumerate(targets)]
                ).float(),
                "cls": torch.cat([t["labels"] for t in targets]).float(),
                "bboxes": xywh,
            }
            total, items = crit(preds, batch)
            return total.sum() / b, tuple(items.values())  # its (box, cls, dfl) vector is multiplied by the batch size

        return run
    raise ValueError(f"unknown implementation {name!r}")


def available(names):
    out = []
    for name in names:
        if name == "ultralytics":
            try:
                import ultralytics.utils.loss  # noqa: F401
            except ImportError:
                print("ultralytics is not installed: skipped (pip install ultralytics)", file=sys.stderr)
                continue
        out.append(name)
    return out


def step(run, feats, targets, device):
    leaves = [f.detach().requires_grad_() for f in feats]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    total, terms = run(leaves, targets)
    total.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, [float(t.detach()) for t in terms]


def peak_memory_worker(name: str, num_gt: int, device_name: str, threads: int) -> None:
    """Run one step in this (fresh) process and print its peak memory growth in MiB as JSON."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    run = build(name, device)
    feats, targets = make_inputs(num_gt, device)
    step(run, feats, targets, device)  # warm-up: allocator pools, lazy inits
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(run, feats, targets, device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        import gc

        gc.collect()
        base = _rss_now()
        step(run, feats, targets, device)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_mib": peak / 2**20}))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_memory(name: str, num_gt: int, device: str, threads: int) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--memory-worker",
        name,
        "--gts",
        str(num_gt),
        "--device",
        device,
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return float("nan")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gts", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=["detloss", "ultralytics"])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        peak_memory_worker(args.memory_worker, args.gts[0], args.device, args.threads)
        return 0

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = available(args.only)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"batch {BATCH}, {IMAGE} px, 8400 anchors, {NUM_CLASSES} classes; {where}; torch {torch.__version__}; "
        f"median of {args.repeats}"
    )
    print()
    print(
        "| GTs / image | implementation | fwd + bwd (ms) | vs detloss | peak memory (MiB) | box | cls | dfl "
        "| max rel. diff |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for num_gt in args.gts:
        feats, targets = make_inputs(num_gt, device)
        runs = {name: build(name, device) for name in names}
        times = {name: [] for name in names}
        values = {}
        for i in range(args.warmup + args.repeats):
            for name, run in runs.items():
                t, values[name] = step(run, feats, targets, device)
                if i >= args.warmup:
                    times[name].append(t)
        ours = statistics.median(times[names[0]])
        for name in names:
            med = statistics.median(times[name])
            mem = float("nan") if args.no_memory else peak_memory(name, num_gt, args.device, args.threads)
            box, cls, dfl = values[name]
            base = values[names[0]]
            diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(values[name], base))
            print(
                f"| {num_gt} | {name} | {med * 1e3:.1f} | {med / ours:.2f}× | {mem:.0f} | {box:.6f} | {cls:.6f} | "
                f"{dfl:.6f} | {diff:.1e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
