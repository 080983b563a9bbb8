"""detloss-report on hand-written run and sweep directories (no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from detloss.report import aggregate, find_runs, group_points, load_run, main, plots, read_series, report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TERMS = ("box", "cls")


def write_csv(
    run_dir: Path, steps: int = 40, val_every: int = 10, diag: bool = False, other_diag: bool = False
) -> None:
    """A small Lightning-style CSV: sparse rows, lr rows, per-step train rows and per-epoch validation rows;
    ``other_diag``: ``diag/<family>/...`` keys of other families, every 5 steps in rows of their own."""
    rows: list[dict[str, float | int]] = []
    for step in range(steps):
        epoch = step // val_every
        rows.append({"step": step, "lr-AdamW/pg1": 1e-3})
        train = {f"train/loss/{t}": (i + 1) * 2.0 / (1 + 0.1 * step) for i, t in enumerate(TERMS)}
        row = {"epoch": epoch, "step": step, **train, "train/loss": sum(train.values())}
        if diag:
            row.update({f"train/weight/{t}": 1.0 + 0.01 * step * i for i, t in enumerate(TERMS)})
            row.update({f"diag/grad_norm/{t}": 0.5 + i + 0.01 * step for i, t in enumerate(TERMS)})
            row.update({f"diag/grad_share/{t}": 0.3 + 0.4 * i for i, t in enumerate(TERMS)})
            row["diag/grad_cos/box__cls"] = -0.2 + 0.01 * step
        rows.append(row)
        if other_diag and step % 5 == 0:
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "diag/seconds": 0.01,
                    "diag/assign/one2one/unmatched/small": step % 7,
                    "diag/assign/one2one/unmatched/large": 1.0,
                    "diag/assign/one2many/matched": 10.0 + step,
                    "diag/layer/grad_norm/box": 0.1 * step,
                }
            )
        if (step + 1) % val_every == 0:
            val = {f"val/loss/{t}": (i + 1) * 2.5 / (1 + 0.1 * step) for i, t in enumerate(TERMS)}
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    **val,
                    "val/loss": sum(val.values()),
                    "val/map_50": step / steps,
                    "val/map": step / steps / 2,
                    "val/map_large": -1.0,
                }
            )
    columns = sorted({k for r in rows for k in r})
    (run_dir / "csv").mkdir(parents=True, exist_ok=True)
    with (run_dir / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def make_run(
    run_dir: Path,
    value: float | None,
    overrides: list[str],
    seed: int,
    *,
    status: str = "ok",
    error: str | None = None,
    with_csv: bool = True,
    **extra,
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "status": status,
        "task": "detection",
        "optimized_metric": "val/map_50",
        "mode": "max",
        "value": value,
        "overrides": overrides,
        "seed": seed,
        "epochs": 4,
        "steps": 40,
        "seconds": 10.0 + seed,
        "best_checkpoint": None,
    }
    if status == "ok":
        record["metrics"] = {
            "val/map_50": value,
            "val/map": value / 2,
            "val/loss": 3.0,
            "val/loss/box": 1.0,
            "val/loss/cls": 2.0,
            "val/map/circle": value,
        }
        record["train"] = {"train/loss": 2.0, "train/loss/box": 0.5 + seed, "train/loss/cls": 1.5}
    else:
        record = {"status": status, "error": error, "overrides": overrides, "seed": seed}
    record.update(extra)
    (run_dir / "metrics.json").write_text(json.dumps(record))
    if with_csv:
        write_csv(run_dir)
    return run_dir


def make_sweep(root: Path, failed: bool = False) -> Path:
    """Two values of box weight × seeds 0, 1 (values hand-picked), optionally a failed third seed."""
    values = {("2.5", 0): 0.5, ("2.5", 1): 0.7, ("7.5", 0): 0.8, ("7.5", 1): 0.9}
    for job, ((weight, seed), value) in enumerate(values.items()):
        overrides = [f"seed={seed}", f"loss.terms.box.weight={weight}", "trainer.max_epochs=4"]
        if job % 2:  # the order of the overrides must not matter
            overrides.reverse()
        make_run(root / str(job), value, overrides, seed)
    if failed:
        make_run(
            root / "4",
            None,
            ["loss.terms.box.weight=2.5", "seed=2", "trainer.max_epochs=4"],
            2,
            status="failed",
            error="ValueError: boom",
            with_csv=False,
        )
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, path


def test_sweep_aggregates_seeds_and_sorts(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    md = report(sweep)
    assert md == sweep / "report" / "report.md"
    rows = read_rows(sweep / "report" / "report.csv")
    assert len(rows) == 2
    assert [r["loss.terms.box.weight"] for r in rows] == ["7.5", "2.5"]  # best map_50 first
    assert "trainer.max_epochs" not in rows[0] and "seed" not in rows[0]  # not swept
    best, worst = rows
    assert float(best["val/map_50_mean"]) == pytest.approx(0.85)
    assert float(best["val/map_50_std"]) == pytest.approx(math.sqrt(0.005))
    assert float(worst["val/map_50_mean"]) == pytest.approx(0.6)
    assert float(worst["val/map_50_std"]) == pytest.approx(math.sqrt(0.02))
    assert float(worst["train/loss/box_mean"]) == pytest.approx(1.0)
    assert float(worst["seconds_mean"]) == pytest.approx(10.5)
    assert best["seeds"] == "2" and best["seed_list"] == "0;1" and best["failed"] == "0"
    assert "val/map/circle_mean" in best  # per-class metrics are in the CSV
    text = md.read_text()
    assert "0.85 ± 0.07071" in text and "0.6 ± 0.1414" in text
    assert "val/map/circle" not in text.split("## Results")[1].split("\n\n")[1]  # not in the Markdown table
    assert "Failed jobs" not in text
    assert_png(sweep / "report" / "sweep_loss.terms.box.weight.png")
    assert "(sweep_loss.terms.box.weight.png)" in text
    for name in ("loss_terms", "loss_share", "metrics"):
        assert_png(sweep / "report" / "best_run" / f"{name}.png")
    assert "best_run/report.md" in text and "`3`" in text.split("## Best run")[1]  # best seed of the best point


def test_best_run_is_best_seed_of_best_point(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    points = aggregate.sort_points(group_points(find_runs(sweep)), "val/map_50", "max")
    assert points[0].best_run("val/map_50", "max").dir.name == "3"
    worst_first = aggregate.sort_points(points, "val/map_50", "min")
    assert [p.settings["loss.terms.box.weight"] for p in worst_first] == ["2.5", "7.5"]


def test_failed_job_is_reported(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", failed=True)
    (sweep / "5" / ".hydra").mkdir(parents=True)  # a job that never wrote metrics.json
    (sweep / "5" / ".hydra" / "overrides.yaml").write_text("- loss.terms.box.weight=9.0\n- seed=0\n")
    text = report(sweep).read_text()
    rows = read_rows(sweep / "report" / "report.csv")
    assert [r["loss.terms.box.weight"] for r in rows] == ["7.5", "2.5", "9.0"]  # the all-failed point last
    failed = rows[1]
    assert failed["seeds"] == "3" and failed["failed"] == "1" and failed["seed_list"] == "0;1;2"
    assert float(failed["val/map_50_mean"]) == pytest.approx(0.6)  # over the successful seeds only
    assert rows[2]["val/map_50_mean"] == "" and rows[2]["failed"] == "1"
    assert "3 (failed: 1/3)" in text and "1 (failed: 1/1)" in text
    section = text.split("## Failed jobs")[1]
    assert "`4`" in section and "ValueError: boom" in section
    assert "`5`" in section and "no metrics.json" in section


def test_single_run_report_draws_every_curve(tmp_path):
    run = make_run(tmp_path / "run", 0.75, ["seed=3"], 3, with_csv=False)
    write_csv(run, diag=True)
    md = report(run, tmp_path / "out")
    assert md == tmp_path / "out" / "report.md"
    text = md.read_text()
    for name in ("loss_terms", "loss_share", "metrics", "weights", "grad_norm", "grad_share", "grad_cos"):
        assert_png(tmp_path / "out" / f"{name}.png")
        assert f"({name}.png)" in text
    assert "val/map_50" in text and "0.75" in text and "| box |" in text


def test_other_diag_families_are_plotted_one_figure_per_family(tmp_path):
    plain = make_run(tmp_path / "plain", 0.75, [], 0, with_csv=False)
    write_csv(plain, diag=True)
    extra = make_run(tmp_path / "extra", 0.75, [], 0, with_csv=False)
    write_csv(extra, diag=True, other_diag=True)
    families = plots.diag_families(read_series(extra / "csv" / "metrics.csv"))
    assert {f: sorted(c) for f, c in families.items()} == {
        "assign": ["one2many/matched", "one2one/unmatched/large", "one2one/unmatched/small"],
        "layer": ["grad_norm/box"],
    }
    assert families["assign"]["one2many/matched"] == (
        [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0],
        [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0],
    )
    text = report(extra).read_text()
    report(plain)
    for name in ("diag_assign", "diag_layer"):
        assert_png(extra / "report" / f"{name}.png")
        assert f"({name}.png)" in text
    assert "### Diagnostics diag/assign/..." in text
    pngs = {p.name for p in (extra / "report").glob("*.png")}
    assert pngs - {p.name for p in (plain / "report").glob("*.png")} == {"diag_assign.png", "diag_layer.png"}
    for name in ("grad_norm", "grad_share", "grad_cos"):  # the gradient figures stay as they were
        assert (extra / "report" / f"{name}.png").read_bytes() == (plain / "report" / f"{name}.png").read_bytes()


def test_single_run_without_diagnostics_skips_their_plots(tmp_path):
    run = make_run(tmp_path / "run", 0.75, [], 0)
    report(run)
    out = run / "report"
    assert {p.name for p in out.glob("*.png")} == {"loss_terms.png", "loss_share.png", "metrics.png"}


def test_run_without_csv_has_numbers_and_no_plots(tmp_path):
    run = make_run(tmp_path / "run", None, [], 0, status="failed", error="RuntimeError: out of memory", with_csv=False)
    text = report(run).read_text()
    assert "RuntimeError: out of memory" in text and "No curves" in text
    assert not list((run / "report").glob("*.png"))


def test_old_records_fall_back_to_hydra_files(tmp_path):
    run = make_run(tmp_path / "sweep" / "0", 0.5, [], 0, with_csv=False)
    record = json.loads((run / "metrics.json").read_text())
    for key in ("overrides", "seed", "mode", "seconds"):
        del record[key]
    (run / "metrics.json").write_text(json.dumps(record))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- loss=yolo\n- seed=7\n")
    (run / "config.yaml").write_text("model:\n  seed: 1\nseed: 7\n")
    loaded = load_run(run)
    assert loaded.overrides == ["loss=yolo", "seed=7"] and loaded.seed == 7 and loaded.mode == "max"
    assert aggregate.point_key(loaded) == ("loss=yolo",)


def test_categorical_sweep_draws_bars(tmp_path, monkeypatch):
    calls = []
    bars = plots.plot_sweep_categorical
    monkeypatch.setattr(plots, "plot_sweep_categorical", lambda *a: calls.append(a[1]) or bars(*a))
    for job, (loss, seed, value) in enumerate(
        [("yolo", 0, 0.4), ("yolo", 1, 0.5), ("yolo_vfl", 0, 0.6), ("yolo_vfl", 1, 0.7)]
    ):
        make_run(tmp_path / "sweep" / str(job), value, [f"loss={loss}", f"seed={seed}"], seed, with_csv=False)
    text = report(tmp_path / "sweep").read_text()
    assert calls == ["loss"]
    assert_png(tmp_path / "sweep" / "report" / "sweep_loss.png")
    assert [r["loss"] for r in read_rows(tmp_path / "sweep" / "report" / "report.csv")] == ["yolo_vfl", "yolo"]
    assert "No curves" in (tmp_path / "sweep" / "report" / "best_run" / "report.md").read_text()
    assert "sweep_loss.png" in text


def test_missing_or_empty_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report(tmp_path / "nowhere")
    assert main([str(tmp_path / "nowhere")]) != 0
    (tmp_path / "file.txt").write_text("not a run")
    with pytest.raises(ValueError, match="file.txt is not a directory"):
        report(tmp_path / "file.txt")
    assert main([str(tmp_path / "file.txt")]) != 0
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(ValueError, match="no run in .*empty"):
        report(tmp_path / "empty")
    assert main([str(tmp_path / "empty")]) != 0
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "empty" / "report").exists()


def test_main_prints_one_line_error_for_a_missing_path(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "sweep"
    assert main([str(missing), "--out", str(tmp_path / "out")]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"detloss-report: error: {missing} does not exist\n"
    assert not (tmp_path / "out").exists()


def test_main_end_to_end(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", failed=True)
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out" / "report.md")
    assert (tmp_path / "out" / "report.csv").is_file() and not (sweep / "report").exists()
    assert_png(tmp_path / "out" / "best_run" / "loss_terms.png")
