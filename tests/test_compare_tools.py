"""tools/make_volume_datasets.py, tools/side_by_side.py, tools/compare_monai.py and tools/compare_smp.py: the
generated datasets read back through detloss's nnU-Net reader with their stated channels, spacings and labels; the
MONAI and smp recipes train a few steps and score finite Dice; the Dice averaging, the kernel/stride rule, the CSV
reading and the summary table on hand-made inputs."""

from __future__ import annotations

import csv
import json
import math
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import compare_monai  # noqa: E402
import make_volume_datasets as mvd  # noqa: E402
import side_by_side  # noqa: E402
from compare_monai import choose_patch, kernels_strides  # noqa: E402
from side_by_side import case_dice, max_time, mean_dice, read_curve, summarise  # noqa: E402

from detloss.data import NnUNetDataset, read_volume  # noqa: E402

SCALE = 0.25
CASES = 5


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("volumes")
    assert mvd.main([str(out), "--cases", str(CASES), "--scale", str(SCALE), "--seed", "3"]) == 0
    return out


@pytest.mark.parametrize("name", list(mvd.DATASETS))
def test_generated_dataset_reads_back(volumes, name):
    spec = mvd.DATASETS[name]
    data = NnUNetDataset(volumes / name)
    assert data.channel_names == list(spec.channels)
    assert data.class_names == list(spec.labels)
    assert [c.name for c in data.cases] == [f"case_{i:03d}" for i in range(CASES)]
    spacing_dhw = tuple(s / SCALE for s in spec.spacing[::-1])
    shapes = set()
    for case, labels in zip(data.cases, data.labels):
        assert case.spacing == pytest.approx(spacing_dhw, rel=1e-5)
        shapes.add(case.shape)
        if spec.shape_range is None:
            assert case.shape == tuple(max(8, round(s * SCALE)) for s in spec.shape[::-1])
        assert labels.shape == case.shape
    present = set().union(*(np.unique(labels).tolist() for labels in data.labels))
    assert present == set(range(len(spec.labels))), f"{name}: labels present {sorted(present)}"
    if spec.shape_range is not None:
        assert len(shapes) > 1, f"{name}: every case has the shape {shapes}"
    meta = json.loads((volumes / name / "dataset.json").read_text())
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == CASES


def test_ct_is_in_hounsfield_units(volumes):
    data = NnUNetDataset(volumes / "ct_iso")
    image, _ = read_volume(data.cases[0].images[0])
    assert image.dtype == np.int16
    assert image.min() <= -950  # air
    assert image.max() >= 700  # cortical bone
    liver = image[data.labels[0] == 1]
    assert 60 < np.median(liver) < 140


def test_mr4_channels_have_very_different_scales_and_some_cases_lack_the_lesion(tmp_path):
    root = mvd.write_dataset("mr4_thick", tmp_path, cases=12, seed=0, scale=0.2)
    data = NnUNetDataset(root)
    highs = [np.percentile(read_volume(p)[0], 99) for p in data.cases[0].images]
    t2, adc, dwi, t1 = highs
    assert t2 > 1000 and adc < 0.01 and 0.05 < dwi < 2 and 50 < t1 < 1000
    with_lesion = [bool((labels == 1).any()) for labels in data.labels]
    assert any(with_lesion) and not all(with_lesion)
    assert all((labels == 2).any() for labels in data.labels)


def test_mr2_structures_are_small_and_move(volumes):
    full = mvd.draw_case(mvd.DATASETS["mr2_aniso"], np.random.default_rng([0, 0]), (96, 96, 64), (1.0, 1.0, 2.0))
    image, labels = full
    assert image.shape == (2, 64, 96, 96) and labels.shape == (64, 96, 96)
    for k in (1, 2, 3):
        share = (labels == k).mean()
        assert 0 < share < 0.005, f"label {k}: {share:.4%} of the voxels"
    other = mvd.draw_case(mvd.DATASETS["mr2_aniso"], np.random.default_rng([0, 1]), (96, 96, 64), (1.0, 1.0, 2.0))[1]
    centre = [np.argwhere(lab == 1).mean(0) for lab in (labels, other)]
    assert np.abs(centre[0] - centre[1]).max() > 2


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = mvd.write_dataset("mr1_iso", tmp_path / "a", cases=1, seed=5, scale=0.25)
    b = mvd.write_dataset("mr1_iso", tmp_path / "b", cases=1, seed=5, scale=0.25)
    c = mvd.write_dataset("mr1_iso", tmp_path / "c", cases=1, seed=6, scale=0.25)
    read = [read_volume(root / "imagesTr" / "case_000_0000.nii.gz")[0] for root in (a, b, c)]
    assert np.array_equal(read[0], read[1])
    assert not np.array_equal(read[0], read[2])


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        mvd.write_dataset("nope", tmp_path)
    with pytest.raises(ValueError, match="cases"):
        mvd.write_dataset("mr1_iso", tmp_path, cases=0)
    with pytest.raises(ValueError, match="spacing"):
        mvd.write_dataset("mr1_iso", tmp_path, spacing=(1.0, 1.0))


# ----------------------------------------------------------------------------------------------- compare_monai


def test_dice_per_case_and_its_average():
    target = np.zeros((4, 4), int)
    target[0, :2] = 1  # label 1: 2 voxels
    pred = np.zeros((4, 4), int)
    pred[0, 0] = 1
    pred[3, 3] = 3  # label 3 predicted, absent from the target: Dice 0
    row = case_dice(pred, target, 4)
    assert row[0] == pytest.approx(2 * 1 / 3) and math.isnan(row[1]) and row[2] == 0.0
    mean, per_label = mean_dice([row, [1.0, math.nan, math.nan]], ["a", "b", "c"])
    assert per_label == pytest.approx({"a": (2 / 3 + 1) / 2, "c": 0.0})  # "b" in no case: left out
    assert mean == pytest.approx(((2 / 3 + 1) / 2 + 0.0) / 2)


def test_kernels_and_strides_from_spacing():
    kernels, strides = kernels_strides([64, 64, 8], [0.8, 0.8, 4.0])
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    with pytest.raises(ValueError, match="divisible"):
        kernels_strides([30, 64, 64], [1.0, 1.0, 1.0])
    patch = choose_patch([96, 96, 64], [1.0, 1.0, 2.0], 64 * 64 * 32)
    assert math.prod(patch) <= 64 * 64 * 32 * 2
    kernels_strides(patch, [1.0, 1.0, 2.0])  # divisible by its strides


def test_max_time_string():
    assert max_time(720) == "00:00:12:00"
    assert max_time(3661.2) == "00:01:01:02"


def test_read_curve_and_summary(tmp_path):
    log = tmp_path / "metrics.csv"
    with log.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "step", "train/loss", "val/dice", "val/dice/a", "val/dice/b", "val/dice_pooled",
                         "val/dice_pooled/a"])  # fmt: skip
        writer.writerow([0, 9, 0.5, "", "", "", "", ""])
        writer.writerow([0, 19, "", 0.4, 0.3, 0.5, 0.45, 0.35])
        writer.writerow([1, 39, "", 0.8, 0.7, 0.9, 0.85, 0.75])
    rows = read_curve(log)
    assert [r["dice"] for r in rows] == [0.4, 0.8] and rows[1]["per_label"] == {"a": 0.7, "b": 0.9}
    pooled = read_curve(log, "val/dice_pooled")  # the 2D pooled Dice, as compare_smp.py scores smp
    assert [r["dice"] for r in pooled] == [0.45, 0.85] and pooled[1]["per_label"] == {"a": 0.75}
    results = {
        "detloss": {"0": {"curve": [[10, 0.4, {}], [20, 0.8, {}]], "seconds": 30}},
        "monai": {"0": {"curve": [[15, 0.5, {}], [25, 0.6, {}]], "seconds": 30}},
    }
    table = summarise(results)
    detloss_row = next(line for line in table.splitlines() if line.startswith("| detloss"))
    monai_row = next(line for line in table.splitlines() if line.startswith("| monai"))
    assert "0.800" in detloss_row and "20 s to 0.600" in detloss_row
    assert "not reached (0.800)" in monai_row


def test_run_detloss_times_the_log_as_it_grows(tmp_path, monkeypatch):
    """A stand-in for measure_training.run that writes a validation row, waits, writes another."""

    def fake_run(task, overrides, out_root):
        run_dir = Path(out_root) / task / "now"
        (run_dir / "csv").mkdir(parents=True)
        log = run_dir / "csv" / "metrics.csv"
        log.write_text("epoch,step,val/dice,val/dice/a\n0,9,0.25,0.25\n")
        time.sleep(1.5)
        with log.open("a") as file:
            file.write("1,19,0.5,0.5\n")
        (run_dir / "metrics.json").write_text(json.dumps({"metrics": {"val/dice": 0.5}, "epochs": 2, "steps": 20}))
        record = json.loads((run_dir / "metrics.json").read_text())
        return {"seconds": 1.6, "record": record, "command": " ".join(overrides), "dir": run_dir}

    monkeypatch.setattr(side_by_side, "run", fake_run)
    r = side_by_side.run_detloss("volumetric", ["data=nnunet"], 90, 4, tmp_path, poll=0.2)
    assert [p[1] for p in r["curve"]] == [0.25, 0.5]
    assert r["curve"][0][0] < 1.2 < r["curve"][1][0]
    assert "++trainer.max_time=00:00:01:30" in r["command"] and "seed=4" in r["command"]
    assert threading.active_count() < 10


def test_resume_keeps_the_runs_already_written_and_refuses_another_comparison(tmp_path):
    """``--resume``: seeds already in ``--out`` are not run again, new seeds are added, and the file of another
    comparison (other minutes or detloss overrides) is refused by name rather than mixed in."""
    calls = []

    def fake(side):
        def run(seed, seconds):
            calls.append((side, seed))
            return {"seconds": seconds, "curve": [[seconds, 0.5 + seed / 10, {"a": 0.5}]]}

        return run

    def args(seeds, minutes=0.01, overrides=()):
        return types.SimpleNamespace(
            data=tmp_path / "ct_iso", minutes=minutes, seeds=seeds, only=None, out=tmp_path / "o.json",
            runs=tmp_path / "runs", plot=None, overrides=list(overrides), resume=True,
        )  # fmt: skip

    assert side_by_side.compare(args([0]), "volumetric", [], "monai", fake("monai"), fake("detloss")) == 0
    assert calls == [("detloss", 0), ("monai", 0)]
    calls.clear()
    side_by_side.compare(args([0, 1]), "volumetric", [], "monai", fake("monai"), fake("detloss"))
    assert calls == [("detloss", 1), ("monai", 1)]
    record = json.loads((tmp_path / "o.json").read_text())
    assert record["seeds"] == [0, 1] and set(record["results"]["detloss"]) == {"0", "1"}
    assert {"machine", "date"} <= set(record["results"]["monai"]["0"])
    assert "| detloss | 2 | 0.550 ± 0.071 |" in record["table"]
    with pytest.raises(SystemExit, match="0.01 min.*this comparison is 'ct_iso', 0.02 min"):
        side_by_side.compare(args([2], minutes=0.02), "volumetric", [], "monai", fake("monai"), fake("detloss"))
    with pytest.raises(SystemExit, match="overrides"):
        side_by_side.compare(args([2], overrides=["seed=1"]), "volumetric", [], "monai", fake("monai"), fake("x"))
    other = args([2])
    other.filters = 32
    with pytest.raises(SystemExit, match="baseline options"):
        side_by_side.compare(other, "volumetric", [], "monai", fake("monai"), fake("detloss"))


def test_monai_recipe_trains_and_scores(volumes):
    pytest.importorskip("monai.networks.nets")
    r = compare_monai.train_monai(volumes / "mr2_aniso", 120, seed=0, max_steps=2, filters=8, log=None)
    assert r["steps"] == 2
    assert r["val_cases"] == 1 and r["train_cases"] == CASES - 1
    assert len(r["curve"]) == 1
    seconds, dice, per_label = r["curve"][-1]
    assert seconds > 0 and 0.0 <= dice <= 1.0 and math.isfinite(dice)
    assert set(per_label) <= {"structure_a", "structure_b", "structure_c"} and per_label
    assert r["strides"][0] == [1, 1, 1]
    assert r["normalisation"] == "z-score (nonzero)"


def test_monai_recipe_normalises_ct_as_the_dynunet_pipeline(volumes, tmp_path):
    """CT: clipped to the training foreground's 0.5/99.5 percentiles, z-scored with its mean and std."""
    nib = pytest.importorskip("nibabel")
    cases = []
    for i, values in enumerate([np.arange(100.0), np.arange(100.0, 200.0)]):
        image, label = np.zeros((10, 10, 4)), np.zeros((10, 10, 4), np.uint8)
        image[..., 0], label[..., 0] = values.reshape(10, 10), 1  # one slice of foreground, the rest air at 0
        image[..., 1:] = -1000.0
        paths = {"image": [str(tmp_path / f"c{i}_0000.nii.gz")], "label": str(tmp_path / f"c{i}.nii.gz")}
        nib.save(nib.Nifti1Image(image, np.eye(4)), paths["image"][0])
        nib.save(nib.Nifti1Image(label, np.eye(4)), paths["label"])
        cases.append(paths)
    low, high, mean, std = compare_monai.ct_statistics(cases)
    everything = np.arange(200.0)
    assert (low, high) == pytest.approx(tuple(np.percentile(everything, [0.5, 99.5])))
    assert (mean, std) == pytest.approx((99.5, everything.std()))
    with pytest.raises(ValueError, match="no training case holds a foreground voxel"):
        compare_monai.ct_statistics([])

    pytest.importorskip("monai.networks.nets")
    r = compare_monai.train_monai(volumes / "ct_iso", 120, seed=0, max_steps=1, filters=8, log=None)
    assert r["normalisation"].startswith("CT clip [") and math.isfinite(r["curve"][-1][1])


# ------------------------------------------------------------------------------------------------- compare_smp


def test_smp_dice_matches_detloss_definition():
    import torch
    from compare_smp import DiceAccumulator

    acc = DiceAccumulator(4)
    target = torch.tensor([[[1, 1, 0, 255], [2, 2, 0, 0]]])
    pred = torch.tensor([[[1, 0, 0, 3], [2, 2, 0, 0]]])  # the 3 sits on an ignored pixel: not counted
    acc.update(pred, target)
    mean, per_class = acc.compute(["a", "b", "c"])
    assert per_class == pytest.approx({"a": 2 / 3, "b": 1.0})  # "c" in neither once ignored pixels are set to 0
    assert mean == pytest.approx((2 / 3 + 1.0) / 2)


def test_smp_recipe_trains_and_scores(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    import make_masks_dataset
    from compare_smp import train_smp

    root = tmp_path / "masks"
    args = [str(root), "--train", "8", "--val", "2", "--size", "64", "--min-size", "10", "--max-size", "24"]
    assert make_masks_dataset.main(args) == 0
    r = train_smp(
        root, 120, seed=0, max_steps=2, val_every=1e-3, free_validation=True, encoder="resnet18", batch_size=4, log=None
    )
    assert r["steps"] == 2 and r["val_images"] == 2
    assert len(r["curve"]) == 2  # after step 1, and at the end
    seconds, dice, per_class = r["curve"][-1]
    assert math.isfinite(dice) and 0.0 <= dice <= 1.0 and per_class
    # free validation: the curve's times leave the validations out
    assert r["validation_seconds"] > 0
    assert seconds == pytest.approx(r["seconds"] - r["validation_seconds"], abs=0.5)


# ------------------------------------------------------------------------------------------ compare_monai_brats


def test_region_dice_and_region_channels():
    import torch
    from compare_monai_brats import RegionChannelsd, region_case_dice

    from detloss.data.regions import labels_to_regions

    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    target[0, :2, :2] = True  # 4 voxels
    target[1, 0, 0] = True
    pred = torch.zeros_like(target)
    pred[0, :2, :1] = True  # 2 of them
    pred[2, 3, 3] = True  # a region the target lacks: left out, not 0
    dice = region_case_dice(pred, target)
    assert dice[0] == pytest.approx(2 * 2 / 6) and dice[1] == 0.0 and math.isnan(dice[2])
    labels = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])[None]  # (1, H, W), as EnsureChannelFirstd gives it
    regions = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
    out = RegionChannelsd("label", regions)({"label": labels})["label"]
    assert out.shape == (3, 2, 4) and torch.equal(out.bool(), labels_to_regions(labels[0], regions))


def test_training_clock_leaves_validations_out_of_the_budget(tmp_path, monkeypatch):
    import compare_monai_brats
    from compare_monai_brats import TrainingClock

    now = [0.0]
    monkeypatch.setattr(compare_monai_brats.time, "perf_counter", lambda: now[0])

    class Trainer:
        sanity_checking, is_global_zero, should_stop = False, True, False

    trainer, clock = Trainer(), TrainingClock(str(tmp_path / "clock.jsonl"), budget_seconds=3)
    trainer.sanity_checking = True  # a sanity check before training: counted as validation, no point
    clock.on_validation_start(trainer, None)
    now[0] = 0.5
    clock.on_validation_end(trainer, None)
    trainer.sanity_checking = False
    now[0] = 1.0
    clock.on_train_start(trainer, None)
    now[0] = 2.0
    clock.on_validation_start(trainer, None)
    now[0] = 6.0  # 4 s of validation
    clock.on_validation_end(trainer, None)
    now[0] = 7.0  # 6 s since the training began, 2 of them training
    clock.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    now[0] = 8.0  # 3 s of training: the budget
    clock.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.should_stop
    [tick] = [json.loads(line) for line in (tmp_path / "clock.jsonl").read_text().splitlines()]
    assert tick["validation_seconds"] == pytest.approx(4.5)


def test_brats_summary_csv_and_ratio(tmp_path):
    from compare_monai_brats import reach_ratio, write_csv

    results = {
        "detloss": {"0": {"curve": [[10, 0.3, {"wt": 0.5, "tc": 0.1}], [20, 0.7, {"wt": 0.9, "tc": 0.5}]]}},
        "monai": {"0": {"curve": [[25, 0.4, {"wt": 0.6, "tc": 0.2}], [50, 0.6, {"wt": 0.8, "tc": 0.4}]]}},
    }
    write_csv(results, tmp_path / "points.csv")
    rows = list(csv.DictReader((tmp_path / "points.csv").open()))
    assert [r["recipe"] for r in rows] == ["detloss", "detloss", "monai", "monai"]
    assert rows[1]["wt"] == "0.9" and rows[3]["seconds"] == "50.0" and rows[0]["dice"] == "0.3000"
    # detloss reaches MONAI's final 0.6 at 20 s, MONAI's final point is at 50 s
    assert reach_ratio(results).endswith("per seed: 0.40")
    assert reach_ratio(results, "monai", "detloss").endswith("per seed: not reached")


def test_brats_comparison_runs_both_recipes(tmp_path):
    pytest.importorskip("monai.networks.nets")
    import compare_monai_brats

    from detloss.data.brats import generate_brats

    root = generate_brats(5, (16, 24, 24), (1.5, 1.5, 1.5), 0, tmp_path / "cache", p_empty=0.0, radius=[4.0, 6.0])
    out = tmp_path / "out" / "tiny.json"
    detloss = ["data.patch_size=[16,16,16]", "data.batch_size=2", "data.patches_per_epoch=4", "model.base_channels=4",
               "model.depth=2"]  # fmt: skip
    args = [str(root), "--minutes", "0.1", "--filters", "8", "--val-every", "2", "--out", str(out), "--runs",
            str(tmp_path / "runs"), "--", *detloss]  # fmt: skip
    assert compare_monai_brats.main(args) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"detloss", "monai"}
    regions = {"whole_tumor", "tumor_core", "enhancing_tumor"}
    for recipe, runs in results.items():
        curve = runs["0"]["curve"]
        times = [p[0] for p in curve]
        assert times == sorted(times) and times[0] > 0, (recipe, times)
        assert all(0 <= p[1] <= 1 and set(p[2]) <= regions for p in curve), curve
    clocked = results["detloss"]["0"]
    ticks = Path(clocked["clock"]).read_text().splitlines()
    assert len(ticks) == len(clocked["curve"]) >= 1
    # the times leave the validations out: the last point is before the end of the process by at least them
    assert clocked["curve"][-1][0] <= clocked["seconds"] - clocked["validation_seconds"]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == sum(len(r["0"]["curve"]) for r in results.values())
    assert out.with_suffix(".png").stat().st_size > 0


def test_plot_runs_tables_each_seed_against_the_others_and_refuses_other_data(tmp_path):
    import plot_runs

    def record(data, recipe, curves):
        runs = {str(s): {"curve": [[t, d, {"a": d}] for t, d in c], "steps": 10, "seconds": 60} for s, c in curves}
        return {"data": f"/x/{data}", "minutes": 12, "results": {recipe: runs}}

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(record("mr", "detloss", [(0, [(100, 0.5), (200, 0.9)]), (1, [(100, 0.7), (200, 0.8)])])))
    b.write_text(json.dumps(record("mr", "monai", [(0, [(150, 0.6), (300, 0.7)]), (1, [(150, 0.85), (300, 0.85)])])))
    c.write_text(json.dumps(record("ct", "monai", [(0, [(150, 0.6)])])))
    results, data = plot_runs.read_runs([f"ours={a}:detloss", f"theirs={b}:monai"])
    assert data == "mr" and list(results) == ["ours", "theirs"]
    rows = plot_runs.reach_table(results).splitlines()
    # seed 0: ours reaches their final 0.7 at 200 s, theirs never reaches 0.9; seed 1: ours never reaches 0.85,
    # theirs passes our final 0.8 at its first point
    assert rows[0].startswith("| recipe | seed | final Dice | a | steps | time to ours's final |")
    assert rows[2] == "| ours | 0 | 0.900 | 0.900 | 10 | – | 200 s to 0.700 |"
    assert rows[3] == "| ours | 1 | 0.800 | 0.800 | 10 | – | not reached (0.850) |"
    assert rows[4] == "| theirs | 0 | 0.700 | 0.700 | 10 | not reached (0.900) | – |"
    assert rows[5] == "| theirs | 1 | 0.850 | 0.850 | 10 | 150 s to 0.800 | – |"
    assert "ours: 0.850 ± 0.071 over 2 seeds" in rows[-3]
    assert plot_runs.main([str(tmp_path / "p.png"), f"ours={a}:detloss", f"theirs={b}:monai"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="different data"):
        plot_runs.read_runs([f"ours={a}:detloss", f"ct={c}:monai"])
    with pytest.raises(SystemExit, match="holds no runs of 'monai'"):
        plot_runs.read_runs([f"ours={a}:monai"])
    with pytest.raises(SystemExit, match="NAME=FILE:RECIPE"):
        plot_runs.read_runs([str(a)])
