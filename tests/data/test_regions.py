"""Regions of a label map (detloss.data.regions): overlapping masks, the way back with regions_class_order, names,
and the errors of bad input."""

import pytest
import torch

from detloss.data.regions import (
    check_class_order,
    default_class_order,
    labels_to_regions,
    parse_regions,
    region_names,
    region_targets,
    regions_to_labels,
)

BRATS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}


def test_overlapping_regions_by_hand():
    labels = torch.tensor([[0, 1, 2], [3, 2, 0]])
    masks = labels_to_regions(labels, list(BRATS.values()))
    assert masks.dtype == torch.bool and masks.shape == (3, 2, 3)
    assert masks[0].tolist() == [[False, True, True], [True, True, False]]
    assert masks[1].tolist() == [[False, False, True], [True, True, False]]
    assert masks[2].tolist() == [[False, False, False], [True, False, False]]
    # a mapping gives its regions in order; a voxel of label 3 is in all three
    assert torch.equal(labels_to_regions(labels, BRATS), masks)
    assert masks[:, 1, 0].all()


def test_inverse_with_class_order():
    labels = torch.randint(0, 4, (5, 6, 7))
    order = default_class_order(BRATS)
    assert order == [1, 2, 3]
    assert torch.equal(regions_to_labels(labels_to_regions(labels, BRATS), order), labels)


def test_later_regions_overwrite_earlier_ones():
    masks = torch.tensor([[True, True, False], [False, True, True]])
    assert regions_to_labels(masks, [5, 7]).tolist() == [5, 7, 7]
    assert regions_to_labels(masks.flip(0), [7, 5]).tolist() == [5, 5, 7]


def test_region_targets_carry_ignore():
    labels = torch.tensor([[0, 3, 255], [1, 2, 0]])
    out = region_targets(labels[None], BRATS, ignore_index=255, dim=1)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 3)
    assert out[0, :, 0, 2].tolist() == [255, 255, 255]
    assert out[0, :, 0, 1].tolist() == [1, 1, 1]
    assert out[0, :, 1, 0].tolist() == [1, 0, 0]
    assert out[0, :, 1, 1].tolist() == [1, 1, 0]
    assert region_targets(labels, BRATS, ignore_index=300).dtype == torch.int16


def test_parse_and_names():
    parsed = parse_regions({"whole tumor": [3, 1, 2], "enhancing tumor": 3})
    assert parsed == {"whole tumor": (1, 2, 3), "enhancing tumor": (3,)}
    assert region_names(parsed) == ["whole_tumor", "enhancing_tumor"]
    assert region_names(["a.b/c d-e_f", "T1ce"]) == ["a_b_c_d-e_f", "T1ce"]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "must map region names"),
        ([1, 2], "must map region names"),
        ({"wt": []}, "region 'wt' must be a label value or a non-empty list"),
        ({"wt": [1, 1]}, "lists a label value twice"),
        ({"wt": [0, 1]}, "region 'wt' holds 0"),
        ({"wt": [1.5]}, "integer label values"),
        ({"wt": [True]}, "integer label values"),
        ({"": [1]}, "non-empty string"),
        ({"a b": [1], "a_b": [2]}, "same logged name"),
    ],
)
def test_parse_errors(mapping, message):
    with pytest.raises(ValueError, match=message):
        parse_regions(mapping)


def test_class_order_errors():
    with pytest.raises(ValueError, match="region 'b' holds no label values"):
        default_class_order({"a": [1, 2], "b": [2], "c": [2]})
    with pytest.raises(ValueError, match=r"region 'a' holds \[1, 2\]"):
        default_class_order({"a": [1, 2, 3], "b": [3]})
    with pytest.raises(ValueError, match="one label value per region"):
        check_class_order([1, 2], BRATS, "data.regions_class_order")
    with pytest.raises(ValueError, match="2 is not a label value of region 'enhancing_tumor'"):
        check_class_order([1, 3, 2], BRATS, "data.regions_class_order")
    assert check_class_order([3, 3, 3], BRATS, "x") == [3, 3, 3]


def test_tensor_errors():
    with pytest.raises(ValueError, match="integer dtype"):
        labels_to_regions(torch.zeros(3), BRATS)
    with pytest.raises(ValueError, match="non-empty list"):
        labels_to_regions(torch.zeros(3, dtype=torch.long), [[]])
    with pytest.raises(ValueError, match="bool tensor"):
        regions_to_labels(torch.zeros(2, 3, dtype=torch.uint8), [1, 2])
    with pytest.raises(ValueError, match="one integer label per region"):
        regions_to_labels(torch.zeros(2, 3, dtype=torch.bool), [1])
