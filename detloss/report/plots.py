"""The figures of a report, as PNG files: a run's curves over optimizer steps (loss terms, their shares,
validation metrics, term weights, gradient diagnostics) and a sweep's metric against each swept value."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detloss.report.aggregate import Point, by_others, headline, is_loss, value_order
from detloss.report.load import Series, to_float

STEP = "optimizer step"
_DIAG_PLOTTED = ("grad_norm", "grad_share", "grad_cos")
"""The ``diag/<family>/`` families with a figure of their own; every other family is drawn in ``diag_<family>.png``."""


# ------------------------------------------------------------------------------------------------- helpers


def _with_prefix(series: Series, prefix: str) -> dict[str, tuple[list[float], list[float]]]:
    """The series under ``prefix`` keyed by the rest of their name, sorted."""
    return {k[len(prefix) :]: series[k] for k in sorted(series) if k.startswith(prefix) and len(k) > len(prefix)}


def _ema(values: Sequence[float], fraction: float = 0.05) -> list[float]:
    """Bias-corrected exponential moving average over a span of ``fraction`` of the points."""
    span = max(1, round(len(values) * fraction))
    if span <= 1:
        return list(values)
    alpha, smoothed, weight, out = 2.0 / (span + 1), 0.0, 0.0, []
    for value in values:
        smoothed = (1 - alpha) * smoothed + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(smoothed / weight)
    return out


def _new_figure(rows: int = 1, cols: int = 1, width: float = 7.0, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * cols if cols > 1 else width, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _plot_smoothed(ax, steps: list[float], values: list[float], label: str, color: str) -> None:
    """A light raw line and its EMA on top."""
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(steps, _ema(values), color=color, linewidth=1.6, label=label)


# ------------------------------------------------------------------------------------------------- one run


def _plot_loss_terms(series: Series, path: Path) -> Path | None:
    """One subplot per loss term plus the total: train (raw and smoothed) and validation per epoch."""
    names = sorted(set(_with_prefix(series, "train/loss/")) | set(_with_prefix(series, "val/loss/")))
    panels = [(f"{n}", f"train/loss/{n}", f"val/loss/{n}", "loss (weighted term value)") for n in names]
    if "train/loss" in series or "val/loss" in series:
        panels.append(("total", "train/loss", "val/loss", "loss (sum of weighted terms)"))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = _new_figure(rows, cols, width=5.0, height=3.5)
    for ax, (title, train_key, val_key, ylabel) in zip(axes, panels):
        if train_key in series:
            _plot_smoothed(ax, *series[train_key], "train (EMA)", "C0")
        if val_key in series:
            ax.plot(*series[val_key], "o-", color="C3", markersize=4, label="validation")
        ax.set(title=title, xlabel=STEP, ylabel=ylabel)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Loss terms: train (light: raw, dark: smoothed) and validation")
    return _save(fig, path)


def _aligned(curves: dict[str, tuple[list[float], list[float]]]) -> tuple[list[float], dict[str, list[float]]]:
    """The steps at which every curve has a value, and each curve's values at those steps."""
    maps = {name: dict(zip(*curve)) for name, curve in curves.items()}
    steps = sorted(set.intersection(*(set(m) for m in maps.values()))) if maps else []
    return steps, {name: [m[s] for s in steps] for name, m in maps.items()}


def _plot_stacked_share(
    curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str, ylabel: str, smooth: bool
) -> Path | None:
    """Each curve's share of their sum at each step, stacked to 100 %."""
    steps, values = _aligned(curves)
    if len(curves) < 2 or len(steps) < 2:
        return None
    if smooth:
        values = {k: _ema(v) for k, v in values.items()}
    totals = [sum(max(0.0, values[k][i]) for k in values) for i in range(len(steps))]
    shares = [[100.0 * max(0.0, v[i]) / t if t > 0 else 0.0 for i, t in enumerate(totals)] for v in values.values()]
    fig, (ax,) = _new_figure(width=8.0, height=4.5)
    ax.stackplot(steps, *shares, labels=list(values), alpha=0.85)
    ax.set(title=title, xlabel=STEP, ylabel=ylabel, ylim=(0, 100), xlim=(steps[0], steps[-1]))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def _plot_metrics(series: Series, path: Path, metric: str | None) -> Path | None:
    """Validation metrics per epoch; per-class metrics (``val/<m>/<class>``) in a second panel."""
    curves = {
        k: v for k, v in series.items() if k.startswith("val/") and not is_loss(k) and any(x != -1.0 for x in v[1])
    }
    groups = [{k: v for k, v in curves.items() if headline(k)}, {k: v for k, v in curves.items() if not headline(k)}]
    groups = [g for g in groups if g]
    if not groups:
        return None
    fig, axes = _new_figure(len(groups), 1, width=8.0, height=4.0)
    for ax, group, title in zip(axes, groups, ["Validation metrics", "Validation metrics per class"]):
        for i, (key, (steps, values)) in enumerate(sorted(group.items())):
            bold = key == metric
            ax.plot(
                steps,
                values,
                "o-",
                color=f"C{i % 10}",
                markersize=3,
                linewidth=2.5 if bold else 1.2,
                label=f"{key} (optimised)" if bold else key,
            )
        ax.set(title=title, xlabel=STEP, ylabel="metric value")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_lines(
    curves: dict[str, tuple[list[float], list[float]]],
    path: Path,
    title: str,
    ylabel: str,
    smooth: bool = True,
    zero_line: bool = False,
    log_y: bool = False,
) -> Path | None:
    """One line per curve over steps (raw and smoothed when ``smooth``)."""
    if not curves:
        return None
    fig, (ax,) = _new_figure(width=8.0, height=4.5)
    for i, (name, (steps, values)) in enumerate(curves.items()):
        if smooth:
            _plot_smoothed(ax, steps, values, name, f"C{i % 10}")
        else:
            ax.plot(steps, values, color=f"C{i % 10}", linewidth=1.6, label=name)
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
    if log_y and all(v > 0 for _, values in curves.values() for v in values):
        ax.set_yscale("log")
    ax.set(title=title, xlabel=STEP, ylabel=ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def run_plots(series: Series, out: Path, metric: str | None) -> dict[str, Path]:
    """Every single-run plot whose data exists, by a short description."""
    cos = {k.replace("__", " vs "): v for k, v in _with_prefix(series, "diag/grad_cos/").items()}
    plots = {
        "Loss terms over training (train and validation)": _plot_loss_terms(series, out / "loss_terms.png"),
        "Share of each term in the summed train loss": _plot_stacked_share(
            _with_prefix(series, "train/loss/"),
            out / "loss_share.png",
            "Share of each loss term in the summed train loss (smoothed)",
            "share of train loss (%)",
            smooth=True,
        ),
        "Validation metrics": _plot_metrics(series, out / "metrics.png", metric),
        "Loss term weights": _plot_lines(
            _with_prefix(series, "train/weight/"), out / "weights.png", "Loss term weights", "term weight", smooth=False
        ),
        "Gradient norm of each term": _plot_lines(
            _with_prefix(series, "diag/grad_norm/"),
            out / "grad_norm.png",
            "Gradient norm of each loss term (light: raw, dark: smoothed)",
            "gradient L2 norm",
            log_y=True,
        ),
        "Share of each term in the gradient": _plot_stacked_share(
            _with_prefix(series, "diag/grad_share/"),
            out / "grad_share.png",
            "Share of each loss term in the gradient norm (smoothed)",
            "share of gradient (%)",
            smooth=True,
        ),
        "Cosine between term gradients": _plot_lines(
            cos,
            out / "grad_cos.png",
            "Cosine similarity between loss term gradients (below 0: conflict)",
            "cosine similarity",
            zero_line=True,
        ),
    }
    stems: set[str] = set()
    for family, curves in diag_families(series).items():
        stem, n = f"diag_{_safe_name(family)}", 1
        while stem in stems:  # two families that differ only in characters a file name leaves out
            n += 1
            stem = f"diag_{_safe_name(family)}_{n}"
        stems.add(stem)
        plots[f"Diagnostics diag/{family}/..."] = _plot_lines(
            curves, out / f"{stem}.png", f"diag/{family}/... (light: raw, dark: smoothed)", "logged value"
        )
    return {title: path for title, path in plots.items() if path is not None}


def diag_families(series: Series) -> dict[str, Series]:
    """The ``diag/<family>/<name>`` curves that no plot above draws, by family, each keyed by ``<name>``."""
    families: dict[str, Series] = {}
    for key in sorted(series):
        _, family, name = (key.split("/", 2) + ["", ""])[:3]
        if key.startswith("diag/") and family and name and family not in _DIAG_PLOTTED:
            families.setdefault(family, {})[name] = series[key]
    return families


# -------------------------------------------------------------------------------------------------- sweeps


def _safe_name(text: str) -> str:
    """``text`` as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "key"


def _numeric(values: Sequence[str]) -> bool:
    return all(to_float(v) is not None for v in values)


def plot_sweep_numeric(points: Sequence[Point], key: str, keys: Sequence[str], metric: str, path: Path) -> Path:
    """The metric against a numeric swept value, mean ± std over seeds, one line per other setting."""
    fig, (ax,) = _new_figure(width=7.5, height=4.5)
    xs_all: list[float] = []
    groups = by_others(points, key, keys)
    for i, (label, group) in enumerate(groups):
        rows = sorted((float(p.settings[key]), *p.stats(metric)) for p in group)
        xs_all += [x for x, _, _ in rows]
        ax.errorbar(
            [x for x, _, _ in rows],
            [m for _, m, _ in rows],
            yerr=[s or 0.0 for _, _, s in rows],
            fmt="o-",
            capsize=3,
            color=f"C{i % 10}",
            label=label or None,
        )
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
        ax.set_xscale("log")
    ax.set(title=f"{metric} against {key}", xlabel=key, ylabel=f"{metric} (mean ± std over seeds)")
    if len(groups) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep_categorical(points: Sequence[Point], key: str, keys: Sequence[str], metric: str, path: Path) -> Path:
    """Bars of the metric per value of a categorical swept key, mean ± std over seeds, grouped by other settings."""
    categories = sorted({p.settings.get(key, "") for p in points}, key=lambda v: value_order([v]))
    groups = by_others(points, key, keys)
    width = 0.8 / len(groups)
    fig, (ax,) = _new_figure(width=max(6.0, 1.2 * len(categories) * len(groups)), height=4.5)
    for i, (label, group) in enumerate(groups):
        stats = {p.settings.get(key, ""): p.stats(metric) for p in group}
        xs = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(categories))]
        means = [stats.get(c, (None, None))[0] for c in categories]
        stds = [stats.get(c, (None, None))[1] or 0.0 for c in categories]
        ax.bar(
            [x for x, m in zip(xs, means) if m is not None],
            [m for m in means if m is not None],
            width,
            yerr=[s for s, m in zip(stds, means) if m is not None],
            capsize=3,
            color=f"C{i % 10}",
            label=label or None,
        )
    ax.set_xticks(range(len(categories)), [c or "(unset)" for c in categories])
    ax.set(title=f"{metric} per {key}", xlabel=key, ylabel=f"{metric} (mean ± std over seeds)")
    if len(groups) > 1:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def sweep_plots(points: Sequence[Point], keys: Sequence[str], metric: str, out: Path) -> dict[str, Path]:
    """The metric against each swept key with at least two values among the points that have it, by caption."""
    done = [p for p in points if p.stats(metric)[0] is not None]
    plots: dict[str, Path] = {}
    for key in keys:
        values = [p.settings.get(key, "") for p in done]
        if len(set(values)) < 2:
            continue
        path = out / f"sweep_{_safe_name(key)}.png"
        plot = plot_sweep_numeric if _numeric(values) else plot_sweep_categorical
        plots[f"{metric} against {key}"] = plot(done, key, keys, metric, path)
    return plots
