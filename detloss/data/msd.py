"""The Medical Segmentation Decathlon layout (Antonelli et al., "The Medical Segmentation Decathlon", Nature
Communications 2022), read as downloaded (``data=msd data.root=DIR``)::

    DIR/dataset.json             {"modality": {"0": "FLAIR", "1": "T1w", ...}, "labels": {"0": "background",
                                  "1": "edema", ...}, "numTraining": N, "training": [{"image":
                                  "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]}
    DIR/imagesTr/x.nii.gz        4D (x, y, z, C), one channel per modality (3D when there is one)
    DIR/labelsTr/x.nii.gz        3D, label values 0 … K−1

The case is named by its image file (``x``). Everything after reading is the nnU-Net reader's
(:class:`~detloss.data.NnUNetDataModule`): folds, normalisation by the modality's name (CT or not), planning,
resampling, patch sampling and sliding windows; ``data.regions`` trains overlapping regions (Task01_BrainTumour:
``whole_tumor: [1, 2, 3]``, ``tumor_core: [2, 3]``, ``enhancing_tumor: [3]``).

Checks at construction, each naming the case: ``dataset.json`` present with ``modality``, ``labels`` (``"0"`` …
``"K−1"``), ``training`` and ``numTraining`` (equal to the cases listed); an image or label listed but absent; an
image whose channel count differs from ``modality``; an image and label of different shape or spacing; label values
absent from ``labels``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cases import FILE_ENDINGS, read_dataset_json
from .nifti import Case, read_channels, read_header
from .nnunet import NnUNetDataModule, NnUNetDataset

__all__ = ["MSDDataset", "MSDDataModule", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("modality", "labels", "training", "numTraining")


def _numbered(path: Path, key: str, mapping) -> list[str]:
    """The values of ``{"0": a, "1": b, ...}`` in order; ``ValueError`` naming ``path`` and ``key`` otherwise."""
    if not isinstance(mapping, dict) or sorted(mapping, key=lambda k: int(k) if str(k).isdigit() else -1) != [
        str(i) for i in range(len(mapping))
    ]:
        raise ValueError(f"{path}: {key} must map '0', '1', … to names, got {mapping!r}")
    return [str(mapping[str(i)]) for i in range(len(mapping))]


class MSDDataset(NnUNetDataset):
    """A checked Decathlon task folder (see the module docstring); the attributes of
    :class:`~detloss.data.NnUNetDataset`, each case's ``images`` being its one (4D) image file."""

    def _read_spec(self) -> dict:
        path = self.root / "dataset.json"
        spec = read_dataset_json(path, REQUIRED_KEYS, "Decathlon")
        self.channel_names = _numbered(path, "modality", spec["modality"])
        self.class_names = _numbered(path, "labels", spec["labels"])
        if len(self.class_names) < 2:
            raise ValueError(f"{path}: labels must name the background and at least one class, got {spec['labels']!r}")
        self.ignore_value = None
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(
                f"ignore_index {self.ignore_index} collides with the labels 0 … {len(self.class_names) - 1}"
            )
        training = spec["training"]
        if not isinstance(training, list) or not all(
            isinstance(t, dict) and {"image", "label"} <= set(t) for t in training
        ):
            raise ValueError(
                f"{path}: training must be a list of {{'image': ..., 'label': ...}}, got {training!r:.200}"
            )
        if spec["numTraining"] != len(training):
            raise ValueError(f"{path}: numTraining is {spec['numTraining']!r} but training lists {len(training)} cases")
        return spec

    def _find_cases(self, spec: dict) -> list[Case]:
        cases, names = [], set()
        for entry in spec["training"]:
            image, label = (self.root / str(entry[k]) for k in ("image", "label"))
            name = next((image.name[: -len(e)] for e in FILE_ENDINGS if image.name.endswith(e)), None)
            if name is None:
                raise ValueError(
                    f"{self.root / 'dataset.json'}: image {entry['image']!r} is not NIfTI ({FILE_ENDINGS})"
                )
            if name in names:
                raise ValueError(f"{self.root / 'dataset.json'}: case {name!r} is listed twice")
            names.add(name)
            for kind, file in (("image", image), ("label", label)):
                if not file.is_file():
                    raise FileNotFoundError(f"case {name!r}: {kind} file listed in dataset.json not found: {file}")
            shape, spacing = read_header(image)
            channels = 1 if len(shape) == 3 else int(np.prod(shape[3:]))
            if len(shape) > 4 or channels != self.in_channels:
                raise ValueError(
                    f"case {name!r}: {image} holds {channels} channel(s) (shape {shape}) but dataset.json's modality "
                    f"names {self.in_channels}: {self.channel_names}"
                )
            label_shape, label_spacing = read_header(label)
            if label_shape[:3] != shape[:3] or any(s != 1 for s in label_shape[3:]):
                raise ValueError(
                    f"case {name!r}: label shape {label_shape} ({label}) differs from its image's {shape[:3]} ({image})"
                )
            if not np.allclose(label_spacing, spacing, rtol=1e-3):
                raise ValueError(f"case {name!r}: label spacing {label_spacing} differs from its image's {spacing}")
            cases.append(Case(name, [image], label, spacing, tuple(shape[:3][::-1])))
        if not cases:
            raise ValueError(f"{self.root / 'dataset.json'}: training lists no cases")
        return sorted(cases, key=lambda c: c.name)

    def read_channels(self, index: int) -> list[np.ndarray]:
        return read_channels(self.cases[index].images[0])[0]


class MSDDataModule(NnUNetDataModule):
    """Training patches and whole validation volumes of a Decathlon task folder (``data=msd data.root=DIR``): the
    arguments and attributes of :class:`~detloss.data.NnUNetDataModule`, the folder read by :class:`MSDDataset`."""

    dataset_class = MSDDataset
