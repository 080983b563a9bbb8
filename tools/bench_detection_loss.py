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
  into the layout it takes, which its head does in the same training step;
* ``detloss-yolo26``: ``EndToEndCriterion(80)`` (YOLO26: two heads, reg_max 1, L1 instead of DFL, ProgLoss at
  the first epoch), on two heads of the same size; ``ultralytics-yolo26``: ``E2ELoss`` on the same maps. Their
  columns are box, cls and l1 summed over the two heads (with the heads' weights).

The values are printed side by side, and the largest relative difference of each term to detloss. "vs detloss" is
each time over the time of detloss' criterion of the same formulation (YOLOv8 or YOLO26).

Under load (``--load``), the same interleaved loop runs while background processes share the cores, as data-loader
workers and other jobs do during CPU training; each condition starts its processes, waits for them to be busy, is
measured, and stops them:

* ``none``: an idle machine;
* ``train``: one background ``python -m detloss.train`` (the default detection run, without logger or callbacks);
* ``busyN``: N processes spinning a Python loop (one core each, like a loader worker decoding images);
* joined with ``+``: e.g. ``train+busy2``.

    python tools/bench_detection_loss.py --load none train train+busy2 --no-memory

``--parts`` times the parts of detloss' YOLOv8 criterion instead (no other implementation; median over the repeats,
ms): the assignment (candidates, their boxes decoded, top-k), the dense target scores, the class term's forward
(BCE's value and derivative in one pass), the rest of the forward; the backward of the head maps (the class
gradient copied into each level's gradient map, the slots' side gradients added) and the rest of the backward.
Each part is timed by a wrapper around the function that does it.

    python tools/bench_detection_loss.py --parts --gts 20 200

Peak memory is measured for each implementation in a fresh subprocess, over a step after a warm-up step: on CPU
the growth of the peak resident set (``VmHWM``) over the step plus the blocks that detloss' buffer pool
(:mod:`detloss.runtime`) kept from the warm-up and reuses; on a GPU ``torch.cuda.max_memory_allocated``
over the step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from types import SimpleNamespace

import torch

NUM_CLASSES, REG_MAX, STRIDES, IMAGE, BATCH = 80, 16, (8, 16, 32), 640, 16


def make_maps(g: torch.Generator, device: torch.device, reg_max: int = REG_MAX) -> list[torch.Tensor]:
    feats = []
    for s in STRIDES:
        n = IMAGE // s
        f = torch.randn(BATCH, 4 * reg_max + NUM_CLASSES, n, n, generator=g)
        if reg_max > 1:
            f[:, : 4 * reg_max] *= 0.5
            f[:, : 4 * reg_max].view(BATCH, 4, reg_max, n, n)[:, :, 1:6] += 2.0
        else:  # distances of 1 to 5 grid units
            f[:, :4] = f[:, :4].abs() + 1.0
        f[:, 4 * reg_max :] -= 4.0  # a trained head's background logits
        feats.append(f.to(device))
    return feats


def make_inputs(num_gt: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {"v8": make_maps(g, device), "one2many": make_maps(g, device, 1), "one2one": make_maps(g, device, 1)}
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


def _ultralytics_model(device: torch.device, reg_max: int):
    head = SimpleNamespace(nc=NUM_CLASSES, reg_max=reg_max, stride=torch.tensor(STRIDES, dtype=torch.float32))
    model = torch.nn.Module()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1, device=device)))
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, epochs=100)
    model.model = [head]
    return model


def _ultralytics_preds(feats, reg_max: int) -> dict:
    x = torch.cat([f.flatten(2) for f in feats], 2)
    return {"boxes": x[:, : 4 * reg_max], "scores": x[:, 4 * reg_max :], "feats": feats}


def _ultralytics_batch(targets, device) -> dict:
    boxes = torch.cat([t["boxes"] for t in targets])
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / IMAGE
    index = torch.cat([torch.full((len(t["labels"]),), i, device=device) for i, t in enumerate(targets)])
    return {"batch_idx": index.float(), "cls": torch.cat([t["labels"] for t in targets]).float(), "bboxes": xywh}


def _head_sums(terms: dict) -> tuple:
    """(box, cls, l1) summed over the two heads."""
    return tuple(sum(v for k, v in terms.items() if k.endswith("/" + name)) for name in ("box", "cls", "l1"))


def build(name: str, device: torch.device):
    """A callable ``(feats, targets) -> (total, (box, cls, dfl or l1))`` for the named implementation."""
    if name == "detloss":
        from detloss.detection import DetectionCriterion

        crit = DetectionCriterion(NUM_CLASSES).to(device)

        def run(feats, targets):
            out = crit(feats["v8"], targets)
            return out.total, tuple(out.terms[k] for k in ("box", "cls", "dfl"))

        return run
    if name == "detloss-yolo26":
        from detloss.detection import EndToEndCriterion

        crit = EndToEndCriterion(NUM_CLASSES).to(device)

        def run(feats, targets):
            out = crit({"one2many": feats["one2many"], "one2one": feats["one2one"]}, targets)
            return out.total, _head_sums(out.terms)

        return run
    if name == "ultralytics":
        from ultralytics.utils.loss import v8DetectionLoss

        crit = v8DetectionLoss(_ultralytics_model(device, REG_MAX), tal_topk=10)

        def run(feats, targets):
            total, items = crit(_ultralytics_preds(feats["v8"], REG_MAX), _ultralytics_batch(targets, device))
            return total.sum() / BATCH, tuple(items.values())  # its (box, cls, dfl) is multiplied by the batch size

        return run
    if name == "ultralytics-yolo26":
        from ultralytics.utils.loss import E2ELoss

        crit = E2ELoss(_ultralytics_model(device, 1))

        def run(feats, targets):  # what E2ELoss.__call__ does, keeping each head's (box, cls, l1)
            batch = _ultralytics_batch(targets, device)
            many = crit.one2many.loss(_ultralytics_preds(feats["one2many"], 1), batch)[0] * crit.o2m
            one = crit.one2one.loss(_ultralytics_preds(feats["one2one"], 1), batch)[0] * crit.o2o
            terms = (many + one) / BATCH
            return terms.sum(), tuple(terms.detach())

        return run
    raise ValueError(f"unknown implementation {name!r}")


def available(names):
    out = []
    for name in names:
        if name.startswith("ultralytics"):
            try:
                import ultralytics.utils.loss  # noqa: F401
            except ImportError:
                print("ultralytics is not installed: skipped (pip install ultralytics)", file=sys.stderr)
                continue
        out.append(name)
    return out


def step(run, feats, targets, device):
    leaves = {key: [f.detach().requires_grad_() for f in maps] for key, maps in feats.items()}
    _sync(device)
    start = time.perf_counter()
    total, terms = run(leaves, targets)
    total.backward()
    _sync(device)
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

        from detloss import runtime as buffers

        gc.collect()
        base = _rss_now()
        step(run, feats, targets, device)
        # the blocks of detloss' buffer pool were touched in the warm-up and are reused: count them as the step's
        peak = _rss_peak() - base + buffers.pooled_bytes()
    print(json.dumps({"peak_mib": peak / 2**20}))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _rss_peak() -> int:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: Linux carries that over ``exec`` from the
    forked parent, so a worker started by a large parent would report the parent's size as its peak."""
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    return int(kib) * 1024


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


@contextmanager
def background_load(spec: str):
    """Start the background processes of a load condition (module docstring), yield once they are busy, stop them."""
    procs, settle = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for part in spec.split("+"):
            if part == "none":
                continue
            if part == "train":
                cmd = [sys.executable, "-m", "detloss.train", "logger=none", "callbacks=none"]
                cmd += ["trainer.max_epochs=1000", f"hydra.run.dir={tmp}/train"]
                settle = max(settle, 30.0)  # imports, data and the first steps
            elif part.startswith("busy"):
                cmd, settle = [sys.executable, "-c", "while True: pass"], max(settle, 1.0)
                procs += [_spawn(cmd) for _ in range(int(part[4:] or 1) - 1)]
            else:
                raise ValueError(f"--load: unknown condition {part!r} (none, train, busyN, joined with +)")
            procs.append(_spawn(cmd))
        try:
            time.sleep(settle)
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"--load {spec}: background process {p.args} exited {p.returncode}")
            yield
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _spawn(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gts", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=["detloss", "ultralytics", "detloss-yolo26", "ultralytics-yolo26"])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--load", nargs="+", default=["none"], help="background load conditions (module docstring)")
    parser.add_argument("--parts", action="store_true", help="time the parts of detloss' criterion (module doc)")
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
    if args.parts:
        parts(args, device)
        return 0
    print(
        "| load | GTs / image | implementation | fwd + bwd (ms) | vs detloss | peak memory (MiB) | box | cls "
        "| dfl / l1 | max rel. diff |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for load in args.load:
        with background_load(load):
            measure(args, device, names, load)
    return 0


def measure(args, device: torch.device, names: list[str], load: str) -> None:
    """One table block: every ``--gts`` value, the implementations interleaved."""
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
        same = {name: "detloss-yolo26" if name.endswith("yolo26") else "detloss" for name in names}
        for name in names:
            med = statistics.median(times[name])
            ours = statistics.median(times.get(same[name], times[name]))
            mem = float("nan") if args.no_memory else peak_memory(name, num_gt, args.device, args.threads)
            box, cls, dfl = values[name]
            base = values.get(same[name], values[name])
            diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(values[name], base))
            print(
                f"| {load} | {num_gt} | {name} | {med * 1e3:.1f} | {med / ours:.2f}× | {mem:.0f} | {box:.6f} | "
                f"{cls:.6f} | {dfl:.6f} | {diff:.1e} |",
                flush=True,
            )


PARTS = ("assignment", "target scores", "class term", "rest of forward", "head maps backward", "rest of backward")


def parts(args, device: torch.device) -> None:
    """The parts of detloss' YOLOv8 criterion, each timed by a wrapper around the function that does it."""
    from detloss.detection import DetectionCriterion, assigner, criterion
    from detloss.losses import _modulated_bce

    clock: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            _sync(device)
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                _sync(device)
                clock[name] = clock.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    crit = DetectionCriterion(NUM_CLASSES, validate=False).to(device)
    patches = [
        (crit.assigner, "forward", timed("assignment", crit.assigner.forward)),
        (assigner.Assignment, "target_scores", timed("target scores", assigner.Assignment.target_scores)),
        (_modulated_bce, "_fused_forward", timed("class term", _modulated_bce._fused_forward)),
        (criterion._HeadMaps, "backward", staticmethod(timed("head maps backward", criterion._HeadMaps.backward))),
    ]
    originals = [(obj, attr, vars(obj).get(attr)) for obj, attr, _ in patches]  # None: an instance's method
    for obj, attr, wrapped in patches:
        setattr(obj, attr, wrapped)
    print("| GTs / image | " + " | ".join(PARTS) + " | forward | backward | fwd + bwd |")
    print("| ---: |" + " ---: |" * (len(PARTS) + 3))
    try:
        for num_gt in args.gts:
            feats, targets = make_inputs(num_gt, device)
            rows = []
            for i in range(args.warmup + args.repeats):
                clock.clear()
                maps = [f.detach().requires_grad_() for f in feats["v8"]]
                _sync(device)
                t0 = time.perf_counter()
                total = crit(maps, targets).total
                _sync(device)
                t1 = time.perf_counter()
                total.backward()
                _sync(device)
                t2 = time.perf_counter()
                if i >= args.warmup:
                    forward, backward = t1 - t0, t2 - t1
                    row = dict(clock, forward=forward, backward=backward)
                    row["rest of forward"] = forward - sum(clock.get(p, 0.0) for p in PARTS[:3])
                    row["rest of backward"] = backward - clock.get("head maps backward", 0.0)
                    rows.append(row)
            cols = [*PARTS, "forward", "backward"]
            med = {c: statistics.median(r.get(c, 0.0) for r in rows) * 1e3 for c in cols}
            whole = statistics.median(r["forward"] + r["backward"] for r in rows) * 1e3
            print(f"| {num_gt} | " + " | ".join(f"{med[c]:.1f}" for c in cols) + f" | {whole:.1f} |", flush=True)
    finally:
        for obj, attr, original in originals:
            if original is None:
                delattr(obj, attr)  # the instance attribute shadowed the class's method
            else:
                setattr(obj, attr, original)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads what it did (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
