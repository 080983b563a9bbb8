"""Overlapping regions of a label map, trained one sigmoid channel per region as nnU-Net trains BraTS (Isensee et
al., "nnU-Net for Brain Tumor Segmentation", BrainLes 2020; nnU-Net v2's region-based training).

A region is a set of label values: with the Medical Segmentation Decathlon's Task01 labels (1 edema, 2 non-enhancing
tumour, 3 enhancing tumour) the BraTS regions are ``whole_tumor = {1, 2, 3}``, ``tumor_core = {2, 3}`` and
``enhancing_tumor = {3}``. A voxel belongs to every region whose set holds its label, so the regions overlap.

Back to labels (:func:`regions_to_labels`) with ``regions_class_order``, one label value per region: the voxels of
region ``i`` take the value ``regions_class_order[i]``, later regions overwriting earlier ones (nnU-Net's rule); for
the BraTS regions above, ``[1, 2, 3]``. :func:`default_class_order` derives it where each region holds exactly one
value that no later region holds.

Region targets (:func:`region_targets`) are ``uint8`` masks, one channel per region: 1 inside, 0 outside, and
``ignore_index`` in every channel of a voxel whose label is ``ignore_index`` (padding, an ``"ignore"`` label).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "RegionTargets",
    "resolve_regions",
    "nnunet_region_labels",
    "parse_regions",
    "region_names",
    "default_class_order",
    "check_class_order",
    "labels_to_regions",
    "regions_to_labels",
    "region_targets",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def region_names(names: Sequence[str]) -> list[str]:
    """Names safe in a logged metric's name: every character other than a letter, digit, ``_`` or ``-`` becomes
    ``_`` (``"whole tumor"`` -> ``"whole_tumor"``)."""
    return [_UNSAFE.sub("_", str(name)) for name in names]


def parse_regions(mapping: Mapping, name: str = "data.regions") -> dict[str, tuple[int, ...]]:
    """``{region name: label values}`` checked, each region's values sorted (names kept as given).

    A region is named by a non-empty string and holds one label value (an integer) or a non-empty list of distinct
    ones, each >= 1 (0 is the background, in no region); two names may not become the same logged name
    (:func:`region_names`). Raises ``ValueError`` naming ``name`` and the region otherwise.
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(
            f"{name} must map region names to label values, e.g. {{whole_tumor: [1, 2, 3]}}, got {mapping!r}"
        )
    regions: dict[str, tuple[int, ...]] = {}
    for key, values in mapping.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{name}: a region name must be a non-empty string, got {key!r}")
        listed = [values] if _is_int(values) else values
        if isinstance(listed, (str, bytes, Mapping)) or not isinstance(listed, Sequence) or not listed:
            raise ValueError(
                f"{name}: region {key!r} must be a label value or a non-empty list of them, got {values!r}"
            )
        if not all(_is_int(v) for v in listed):
            raise ValueError(f"{name}: region {key!r} must hold integer label values, got {values!r}")
        if len(set(listed)) != len(listed):
            raise ValueError(f"{name}: region {key!r} lists a label value twice: {list(listed)}")
        if min(listed) < 1:
            raise ValueError(
                f"{name}: region {key!r} holds {min(listed)}; label values of regions are >= 1 (0 is the background)"
            )
        regions[key] = tuple(sorted(int(v) for v in listed))
    safe = region_names(regions)
    if len(set(safe)) != len(safe):
        clash = sorted({s for s in safe if safe.count(s) > 1})
        raise ValueError(f"{name}: region names {list(regions)} give the same logged name(s) {clash}")
    return regions


def default_class_order(regions: Mapping[str, Sequence[int]] | Sequence[Sequence[int]]) -> list[int]:
    """``regions_class_order`` where it follows from the regions: for each region the one label value that no later
    region holds (BraTS ``[1,2,3], [2,3], [3]`` -> ``[1, 2, 3]``). Raises ``ValueError`` (asking for
    ``data.regions_class_order``) where a region holds none or several such values."""
    sets = [set(v) for v in (regions.values() if isinstance(regions, Mapping) else regions)]
    names = list(regions) if isinstance(regions, Mapping) else [f"#{i}" for i in range(len(sets))]
    order = []
    for i, values in enumerate(sets):
        own = values - set().union(*sets[i + 1 :])
        if len(own) != 1:
            raise ValueError(
                f"regions_class_order cannot be derived: region {names[i]!r} holds {sorted(own) or 'no'} label values "
                "that no later region holds (one is needed); give data.regions_class_order, one label value per region"
            )
        order.append(own.pop())
    return order


def check_class_order(order: Sequence[int], regions: Mapping[str, Sequence[int]], name: str) -> list[int]:
    """``order`` as a list of ints, one per region, each a value of its region; ``ValueError`` naming ``name``."""
    if isinstance(order, (str, bytes)) or not isinstance(order, Sequence) or not all(_is_int(v) for v in order):
        raise ValueError(f"{name} must be a list of label values, one per region, got {order!r}")
    if len(order) != len(regions):
        raise ValueError(
            f"{name} must give one label value per region ({len(regions)}: {list(regions)}), got {list(order)}"
        )
    for value, (region, values) in zip(order, regions.items()):
        if value not in values:
            raise ValueError(f"{name}: {value} is not a label value of region {region!r} {list(values)}")
    return [int(v) for v in order]


def _region_list(regions) -> list[tuple[int, ...]]:
    values = list(regions.values()) if isinstance(regions, Mapping) else list(regions)
    if not values or not all(isinstance(v, Sequence) and len(v) and all(_is_int(x) for x in v) for v in values):
        raise ValueError(f"regions must be a non-empty list of non-empty lists of label values, got {regions!r}")
    return [tuple(int(x) for x in v) for v in values]


def labels_to_regions(labels: Tensor, regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]]) -> Tensor:
    """``labels (*spatial)`` of an integer dtype -> ``(R, *spatial)`` bool: channel ``r`` is where the label is one
    of region ``r``'s values (a mapping gives its regions in order)."""
    values = _region_list(regions)
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise ValueError(f"labels must be a tensor of an integer dtype, got {getattr(labels, 'dtype', type(labels))}")
    labels = labels.long()
    return torch.stack([torch.isin(labels, torch.tensor(v, device=labels.device)) for v in values])


def regions_to_labels(masks: Tensor, regions_class_order: Sequence[int]) -> Tensor:
    """``masks (R, *spatial)`` bool -> labels ``(*spatial)`` int64: 0, then region ``i``'s voxels set to
    ``regions_class_order[i]`` in order, later regions overwriting earlier ones (nnU-Net's rule)."""
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim < 1:
        raise ValueError(f"masks must be a bool tensor (R, *spatial), got {getattr(masks, 'dtype', type(masks))}")
    order = list(regions_class_order)
    if len(order) != masks.shape[0] or not all(_is_int(v) for v in order):
        raise ValueError(
            f"regions_class_order must give one integer label per region ({masks.shape[0]} masks), got {order!r}"
        )
    labels = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    for mask, value in zip(masks, order):
        labels[mask] = value
    return labels


def region_targets(
    labels: Tensor,
    regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
    ignore_index: int = 255,
    dim: int = 0,
) -> Tensor:
    """The region masks of ``labels`` stacked along ``dim`` (0 for a sample ``(*spatial)``, 1 for a batch ``(B,
    *spatial)``): 1 inside, 0 outside, ``ignore_index`` in every channel of a voxel labelled ``ignore_index``.
    ``uint8`` (``int16`` for an ``ignore_index`` outside [0, 255])."""
    masks = labels_to_regions(labels, regions)
    dtype = torch.uint8 if 0 <= int(ignore_index) <= 255 else torch.int16
    out = masks.to(dtype)
    ignored = labels == ignore_index
    if bool(ignored.any()):
        out[:, ignored] = ignore_index
    return out.movedim(0, dim)


def resolve_regions(
    given: Mapping | None,
    given_order: Sequence[int] | None,
    found: Mapping[str, Sequence[int]] | None,
    found_order: Sequence[int] | None,
    num_labels: int,
    source: str,
) -> tuple[dict[str, tuple[int, ...]] | None, list[int] | None]:
    """The regions of a dataset and their ``regions_class_order``: ``given`` (``data.regions``) or ``found`` (read
    from ``source``, e.g. an nnU-Net ``dataset.json`` whose labels are lists), which must agree where both exist;
    each region's values among the labels ``1 … num_labels − 1``; the order given, found, or derived
    (:func:`default_class_order`). ``(None, None)`` without regions."""
    regions = None if given is None else parse_regions(given)
    if found is not None:
        found = parse_regions(found, source)
        if regions is not None and regions != found:
            raise ValueError(f"data.regions {regions} differ from the regions of {source} {found}")
        regions = found
    if regions is None:
        if given_order is not None:
            raise ValueError("data.regions_class_order is set but data.regions is not: it orders regions")
        return None, None
    for name, values in regions.items():
        unknown = sorted(v for v in values if v >= num_labels)
        if unknown:
            raise ValueError(
                f"data.regions: region {name!r} holds label values {unknown} that the data does not have (its labels "
                f"are 0 … {num_labels - 1}, {source})"
            )
    order = given_order if given_order is not None else found_order
    name = "data.regions_class_order" if given_order is not None else f"regions_class_order of {source}"
    order = default_class_order(regions) if order is None else check_class_order(list(order), regions, name)
    return regions, order


def nnunet_region_labels(spec: Mapping, source) -> tuple[dict[str, int], dict, list]:
    """An nnU-Net v2 ``dataset.json`` (``spec``, read from ``source``) whose labels are lists: ``(labels, regions,
    regions_class_order)``, ``labels`` the plain ones the regions imply (``background`` 0, ``label_<v>`` for each
    value a region holds, ``ignore`` kept). The regions are checked by :func:`resolve_regions` later."""
    labels = dict(spec["labels"])
    if "regions_class_order" not in spec:
        raise ValueError(f"{source}: labels given as lists (regions) need regions_class_order, one label per region")
    ignore = labels.pop("ignore", None)
    if labels.pop("background", None) != 0:
        raise ValueError(f"{source}: region labels need 'background': 0, got {spec['labels']!r}")
    values = sorted({v for r in labels.values() for v in ([r] if _is_int(r) else r) if _is_int(v)})
    plain = {"background": 0, **{f"label_{v}": v for v in values}}
    return (plain if ignore is None else plain | {"ignore": ignore}), labels, spec["regions_class_order"]


class RegionTargets(Dataset):
    """A dataset of volumes ``(image, {"labels": (*spatial), ...})`` or of 2D masks ``(image, mask (H, W))`` whose
    labels become region masks ``(R, *spatial)`` (:func:`region_targets`); everything else of a sample is passed on
    as it is."""

    def __init__(self, dataset: Dataset, regions: Mapping[str, Sequence[int]], ignore_index: int = 255) -> None:
        self.dataset, self.regions, self.ignore_index = dataset, [tuple(v) for v in regions.values()], int(ignore_index)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # the wrapped dataset's attributes (cases, class_names, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        if isinstance(target, Tensor):
            return image, region_targets(target, self.regions, self.ignore_index)
        return image, {**target, "labels": region_targets(target["labels"], self.regions, self.ignore_index)}
