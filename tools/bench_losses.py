"""Forward + backward time of every loss at the sizes training uses, beside its built-in counterpart.

    python tools/bench_losses.py                 # CPU, 2 threads, Markdown table on stdout
    python tools/bench_losses.py --device cuda   # on a GPU
    python tools/bench_losses.py --no-validate   # ours with validate=False (no host syncs)

Sizes: dense classification on 16 × 8400 anchors × 80 classes; box, DFL and regression losses on 2,000 positive
pairs; region losses on 8 × 4 × 256 × 256 logits. Each timing is one forward and one backward from fresh leaf
tensors; ours and theirs are interleaved in the same loop, and the table gives the median of ``--repeats`` runs
after ``--warmup`` runs. The ratio column is ours / theirs (lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision.ops as tv

import detloss.losses as L


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, inputs, device) -> float:
    leaves = [x.detach().requires_grad_(x.is_floating_point()) if i == 0 else x for i, x in enumerate(inputs)]
    _sync(device)
    start = time.perf_counter()
    fn(*leaves).backward()
    _sync(device)
    return time.perf_counter() - start


def cases(device: torch.device, validate: bool):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    # dense classification: 16 × 8400 anchors × 80 classes, ~0.1 % positives with a soft score
    logits = rand(16, 8400, 80, scale=2.0) - 4.0
    scores = torch.zeros(16, 8400, 80)
    pos = torch.rand(16, 8400, 80, generator=g) < 1e-3
    scores[pos] = torch.rand(int(pos.sum()), generator=g)
    scores = scores.to(device)
    hard = (scores > 0).float()
    flat_logits = logits.view(-1, 80)
    labels = torch.randint(0, 80, (flat_logits.shape[0],), generator=g).to(device)

    # boxes: 2,000 positive pairs
    xy = torch.rand(2000, 2, generator=g) * 600
    wh = torch.rand(2000, 2, generator=g) * 100 + 2
    pred_boxes = torch.cat([xy, xy + wh], 1).to(device)
    txy = xy + torch.randn(2000, 2, generator=g) * 5
    twh = wh * torch.exp(torch.randn(2000, 2, generator=g) * 0.2)
    target_boxes = torch.cat([txy, txy + twh], 1).to(device)
    dist_logits = rand(2000, 4, 16)
    dist_target = (torch.rand(2000, 4, generator=g) * 15).to(device)
    reg_pred, reg_target = rand(2000, 4), rand(2000, 4)

    # region: 8 × 4 × 256 × 256
    seg_logits = rand(8, 4, 256, 256)
    seg_target = torch.randint(0, 4, (8, 256, 256), generator=g).to(device)

    v = {"validate": validate}
    s = {"reduction": "sum", **v}

    def two_ce_dfl(x, t):  # the common reference: two cross-entropies weighted by the distance to each bin
        t = t.clamp(0, 16 - 1.01)
        left = t.floor().long()
        wl = left + 1 - t
        ce = lambda idx: F.cross_entropy(x.reshape(-1, 16), idx.reshape(-1), reduction="none").view_as(t)
        return (ce(left) * wl + ce(left + 1) * (1 - wl)).mean(-1).sum()

    bce_ref = lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="sum")
    yield (
        "bce_with_logits",
        "F.binary_cross_entropy_with_logits",
        (lambda x, t: L.bce_with_logits(x, t, **s)),
        bce_ref,
        (logits, scores),
    )
    yield (
        "focal_loss",
        "torchvision sigmoid_focal_loss",
        (lambda x, t: L.focal_loss(x, t, **s)),
        (lambda x, t: tv.sigmoid_focal_loss(x, t, reduction="sum")),
        (logits, hard),
    )
    yield (
        "focal_loss",
        "F.binary_cross_entropy_with_logits",
        (lambda x, t: L.focal_loss(x, t, **s)),
        bce_ref,
        (logits, hard),
    )
    yield (
        "varifocal_loss",
        "F.binary_cross_entropy_with_logits",
        (lambda x, t: L.varifocal_loss(x, t, **s)),
        bce_ref,
        (logits, scores),
    )
    yield (
        "quality_focal_loss",
        "F.binary_cross_entropy_with_logits",
        (lambda x, t: L.quality_focal_loss(x, t, **s)),
        bce_ref,
        (logits, scores),
    )
    yield (
        "cross_entropy",
        "F.cross_entropy",
        (lambda x, t: L.cross_entropy(x, t, **v)),
        (lambda x, t: F.cross_entropy(x, t)),
        (flat_logits, labels),
    )
    yield (
        "hinge_loss (multi-class)",
        "nn.MultiMarginLoss",
        (lambda x, t: L.hinge_loss(x, t, **v)),
        (lambda x, t: F.multi_margin_loss(x, t)),
        (flat_logits, labels),
    )
    for kind, ref in [
        ("iou", None),
        ("giou", tv.generalized_box_iou_loss),
        ("diou", tv.distance_box_iou_loss),
        ("ciou", tv.complete_box_iou_loss),
        ("siou", None),
        ("eiou", None),
    ]:
        name = f"torchvision {ref.__name__}" if ref else "—"
        theirs = (lambda x, t, ref=ref: ref(x, t, reduction="sum")) if ref else None
        yield (
            f"iou_loss({kind})",
            name,
            (lambda x, t, kind=kind: L.iou_loss(x, t, kind, **s)),
            theirs,
            (pred_boxes, target_boxes),
        )
    yield (
        "dfl_loss",
        "2 × F.cross_entropy",
        (lambda x, t: L.dfl_loss(x, t, **s)),
        two_ce_dfl,
        (dist_logits, dist_target),
    )
    yield (
        "mse_loss",
        "F.mse_loss",
        (lambda x, t: L.mse_loss(x, t, **v)),
        (lambda x, t: F.mse_loss(x, t)),
        (reg_pred, reg_target),
    )
    yield (
        "l1_loss",
        "F.l1_loss",
        (lambda x, t: L.l1_loss(x, t, **v)),
        (lambda x, t: F.l1_loss(x, t)),
        (reg_pred, reg_target),
    )
    yield (
        "smooth_l1_loss",
        "F.smooth_l1_loss",
        (lambda x, t: L.smooth_l1_loss(x, t, **v)),
        (lambda x, t: F.smooth_l1_loss(x, t)),
        (reg_pred, reg_target),
    )
    for name in ("dice_loss", "generalized_dice_loss", "tversky_loss", "focal_tversky_loss", "jaccard_loss"):
        fn = getattr(L, name)
        yield (
            name,
            "F.cross_entropy (yardstick)",
            (lambda x, t, fn=fn: fn(x, t, **v)),
            (lambda x, t: F.cross_entropy(x, t)),
            (seg_logits, seg_target),
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-validate", action="store_true", help="run ours with validate=False")
    parser.add_argument("--only", default=None, help="run only the losses whose name contains this text")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU threads"
    header = (
        f"device: {device} ({where}), torch {torch.__version__}, validate={not args.no_validate}, "
        f"median of {args.repeats}"
    )
    print(header)
    print()
    print("| loss | ours (ms) | counterpart | theirs (ms) | ours / theirs |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name, ref_name, ours, theirs, inputs in cases(device, validate=not args.no_validate):
        if args.only and args.only not in name:
            continue
        t_ours, t_theirs = [], []
        for i in range(args.warmup + args.repeats):
            a = _time_once(ours, inputs, device)
            b = _time_once(theirs, inputs, device) if theirs else float("nan")
            if i >= args.warmup:
                t_ours.append(a)
                t_theirs.append(b)
        mo, mt = statistics.median(t_ours) * 1e3, statistics.median(t_theirs) * 1e3
        ratio = f"{mo / mt:.2f}×" if theirs else "—"
        theirs_ms = f"{mt:.2f}" if theirs else "—"
        print(f"| `{name}` | {mo:.2f} | {ref_name} | {theirs_ms} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
