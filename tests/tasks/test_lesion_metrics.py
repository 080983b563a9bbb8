"""BraTS 2023 lesion-wise Dice and HD95 (detloss.tasks.lesion_metrics) on hand-built volumes with hand-computed
values: 1 mm voxels, lesions of 4 × 4 × 4 = 64 mm³ (above the glioma threshold of 50 mm³) unless said otherwise."""

import numpy as np
import pytest
import torch

from detloss.tasks.lesion_metrics import BRATS_PENALTY, lesion_wise
from detloss.tasks.volume_metrics import VolumeMetrics

SHAPE = (24, 24, 24)


def volume(*boxes) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        mask[tuple(slice(a, b) for a, b in box)] = True
    return mask


A = ((2, 6), (2, 6), (2, 6))  # a lesion
FAR = ((14, 18), (14, 18), (14, 18))  # another, 8 voxels away on every axis: their dilations by 3 do not meet


def test_a_perfect_prediction_scores_one_and_zero():
    assert lesion_wise(volume(A, FAR), volume(A, FAR)) == (1.0, 0.0)


def test_a_missed_lesion_scores_zero_and_the_penalty():
    dice, hd = lesion_wise(volume(A), volume(A, FAR))
    assert dice == pytest.approx((1 + 0) / 2) and hd == pytest.approx((0 + 374) / 2)
    assert BRATS_PENALTY == 374.0


def test_a_false_positive_component_counts_as_a_lesion_scoring_zero_and_the_penalty():
    # lesion A predicted without its top slice: Dice 2·48 / (48 + 64) = 6/7; the four voxels of the top of the
    # prediction's interior lie 1 mm from the target's boundary (and the target's top face 1 mm from the
    # prediction's): HD95 = 1. A component far from any lesion: one false positive.
    partial = ((2, 6), (2, 6), (2, 5))
    pred = volume(partial, ((14, 16), (14, 16), (14, 16)))
    assert lesion_wise(pred, volume(A)) == pytest.approx(((6 / 7) / 2, (1 + 374) / 2))
    assert lesion_wise(volume(partial), volume(A)) == pytest.approx((6 / 7, 1.0))  # without the false positive


def test_two_lesions_merged_by_one_prediction_each_count_the_whole_component():
    # lesions z 2..5 and z 14..17 (8 voxels apart); one predicted bar z 2..17 overlaps both: each lesion's Dice is
    # 2·64 / (256 + 64) = 0.4; HD95 of each: the bar's boundary reaches 12 mm beyond the lesion (the 95th
    # percentile of its 200 boundary voxels: 16 of them at 12 mm), the lesion's boundary is within 1 mm of the bar's
    lesions = volume(A, ((2, 6), (2, 6), (14, 18)))
    bar = volume(((2, 6), (2, 6), (2, 18)))
    assert lesion_wise(bar, lesions) == pytest.approx((0.4, 12.0))


def test_ground_truth_components_whose_dilations_meet_are_one_lesion():
    # two components 2 voxels apart: with the challenge's dilation (3) one lesion of 128 voxels, of which the
    # prediction holds one half: Dice 2·64 / (64 + 128) = 2/3, HD95 the far face of the missed half (6 mm); without
    # dilation two lesions, one found (1, 0) and one missed (0, 374)
    target = volume(A, ((2, 6), (2, 6), (8, 12)))
    pred = volume(A)
    assert lesion_wise(pred, target) == pytest.approx((2 / 3, 6.0))
    assert lesion_wise(pred, target, dilation=0) == pytest.approx((0.5, 187.0))


def test_a_prediction_near_a_lesion_within_its_dilation_is_matched_not_a_false_positive():
    near = volume(A, ((2, 6), (2, 6), (8, 10)))  # 2 voxels above the lesion: inside its dilation by 3
    dice, _ = lesion_wise(near, volume(A))
    assert dice == pytest.approx(2 * 64 / (96 + 64))  # one lesion matched by both components, no false positive
    dice_far, _ = lesion_wise(near, volume(A), dilation=1)  # outside a dilation by 1: a false positive
    assert dice_far == pytest.approx(1 / 2)


def test_small_lesions_are_left_out_with_the_components_that_match_them():
    small = ((14, 17), (14, 17), (14, 17))  # 27 voxels: 27 mm³ <= 50
    target = volume(A, small)
    assert lesion_wise(volume(A), target) == (1.0, 0.0)  # the missed small lesion does not count
    assert lesion_wise(volume(A, small), target) == (1.0, 0.0)  # nor is its prediction a false positive
    # at 2 mm along the first axis the same voxels hold 54 mm³: counted, and missed
    assert lesion_wise(volume(A), target, spacing=(2.0, 1.0, 1.0))[0] == pytest.approx(0.5)
    assert lesion_wise(volume(), volume(small)) == (1.0, 0.0)  # only small lesions, nothing predicted


def test_empty_cases_as_the_challenge_scores_them():
    empty = volume()
    assert lesion_wise(empty, empty) == (1.0, 0.0)
    assert lesion_wise(volume(A), empty) == (0.0, 374.0)
    assert lesion_wise(volume(A, FAR), empty) == (0.0, 374.0)
    assert lesion_wise(empty, volume(A)) == (0.0, 374.0)


def test_spacing_scales_the_distances():
    partial = ((2, 6), (2, 6), (2, 5))
    assert lesion_wise(volume(partial), volume(A), spacing=(1.0, 1.0, 3.0)) == pytest.approx((6 / 7, 3.0))


def test_tensors_and_2d_masks():
    target = torch.zeros(16, 16, dtype=torch.bool)
    target[2:10, 2:10] = True  # 64 pixels
    pred = target.clone()
    pred[2:10, 9] = False
    pred[13:15, 13:15] = True  # a false positive
    dice, hd = lesion_wise(pred, target)
    assert dice == pytest.approx((2 * 56 / (56 + 64)) / 2) and hd == pytest.approx((1 + 374) / 2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same shape"):
        lesion_wise(volume(A), volume(A)[:-1])
    with pytest.raises(ValueError, match="spacing"):
        lesion_wise(volume(A), volume(A), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="dilation"):
        lesion_wise(volume(A), volume(A), dilation=-1)
    with pytest.raises(ValueError, match="2D or 3D"):
        lesion_wise(np.zeros(4, bool), np.zeros(4, bool))


def test_the_volume_metrics_average_the_lesion_wise_scores_over_all_cases():
    # case 0: a missed lesion beside a found one; case 1: nothing to find, nothing found (1, 0)
    pred = torch.from_numpy(np.stack([volume(A), volume()]))[:, None]
    target = torch.from_numpy(np.stack([volume(A, FAR), volume()]))[:, None]
    metrics = VolumeMetrics(1, surface=False, lesion_wise=True)
    metrics.update(pred, target)
    values = metrics.compute()
    assert values["lesion_dice"].item() == pytest.approx((0.5 + 1) / 2)
    assert values["lesion_hd95"].item() == pytest.approx((187 + 0) / 2)
    assert values["dice"].item() == pytest.approx(2 * 64 / (64 + 128))  # case 1 holds no lesion: left out
