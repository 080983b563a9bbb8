"""Ultralytics YOLOv8 detection checkpoints (``yolov8n.pt``, ``yolov8s.pt``, ...) as weights of
:class:`~detloss.models.YOLODetector`, whose layout is YOLOv8's.

An Ultralytics ``.pt`` file is a pickle of Ultralytics' own modules (``{"model": DetectionModel, ...}``, weights in
half precision; a training checkpoint may hold an ``"ema"`` model instead), so reading it needs ``ultralytics``
installed: ``pip install "detloss[pretrained]"``. Only the file is read; Ultralytics' code runs nowhere else.

The mapping follows the module structure of the YOLOv8 layout (``ultralytics/cfg/models/v8/yolov8.yaml``): its
layers 0-9 are the backbone (``stem``, ``stage1`` ... ``stage4``, SPPF last), 12, 15, 16, 18, 19, 21 the neck
(``top_down4``, ``top_down3``, ``down3``, ``bottom_up4``, ``down4``, ``bottom_up5``; 10, 11, 13, 14, 17, 20 are
upsamplings and concatenations without weights) and 22 the head (``cv2`` the box branches, ``cv3`` the class
branches, ``dfl`` a fixed convolution holding ``0..reg_max-1``, which detloss computes instead). Inside a block the
names map one to one: ``cv1`` -> ``conv1``, ``cv2`` -> ``conv2``, ``m`` -> ``blocks``, and a ``Conv``'s ``conv`` and
``bn`` -> ``0`` and ``1``. Every tensor of the file is used once and every tensor of the detector is filled once,
with the same shape, or loading fails naming the first that is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["UltralyticsWeights", "read_ultralytics", "YOLOV8_LAYERS", "YOLOV8_CLASS_BRANCH"]

#: the module types of a YOLOv8 detection model's layers, in order (``DetectionModel.model``)
YOLOV8_LAYERS = (
    "Conv", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "Conv", "C2f", "SPPF",
    "Upsample", "Concat", "C2f", "Upsample", "Concat", "C2f", "Conv", "Concat", "C2f", "Conv", "Concat", "C2f",
    "Detect",
)  # fmt: skip
#: the module types of each class branch of a YOLOv8 head (``Detect.cv3[i]``); YOLO11's and YOLO26's are two
#: depthwise pairs, ``Sequential(DWConv, Conv)``, then the ``Conv2d``
YOLOV8_CLASS_BRANCH = ("Conv", "Conv", "Conv2d")
#: Ultralytics layer -> detloss module, for the layers with weights
_LAYERS = {
    0: "stem", 1: "stage1.0", 2: "stage1.1", 3: "stage2.0", 4: "stage2.1", 5: "stage3.0", 6: "stage3.1",
    7: "stage4.0", 8: "stage4.1", 9: "stage4.2", 12: "top_down4", 15: "top_down3", 16: "down3", 18: "bottom_up4",
    19: "down4", 21: "bottom_up5",
}  # fmt: skip
_NAMES = {"cv1": "conv1", "cv2": "conv2", "m": "blocks", "conv": "0", "bn": "1"}
_HEADS = {"cv2": "box_heads", "cv3": "cls_heads"}
INSTALL = 'pip install "detloss[pretrained]"'


@dataclass(frozen=True)
class UltralyticsWeights:
    """The weights of an Ultralytics YOLOv8 checkpoint under detloss's names, and the layout they fit.

    ``state``: float32 tensors by detloss parameter / buffer name; ``width``, ``depth``, ``max_channels``,
    ``reg_max``, ``in_channels``: the :class:`~detloss.models.YOLODetector` arguments of that layout;
    ``num_classes`` and ``cls_hidden`` (the class branches' width); ``path``: the file.
    """

    state: dict[str, Tensor]
    num_classes: int
    width: float
    depth: float
    max_channels: int
    reg_max: int
    cls_hidden: int
    in_channels: int
    path: Path

    def layout(self) -> dict:
        """The detector arguments that the weights need, for a message."""
        names = ("width", "depth", "max_channels", "reg_max", "cls_hidden", "in_channels")
        return {name: getattr(self, name) for name in names}


def _detloss_name(name: str) -> str | None:
    """The detloss name of the Ultralytics state-dict key ``name`` (``model.<layer>.<...>``); ``None`` for the
    fixed DFL convolution."""
    _, layer, *rest = name.split(".")
    layer = int(layer)
    if layer == len(YOLOV8_LAYERS) - 1:  # Detect: cv2.<level>.<...>, cv3.<level>.<...>, dfl.conv.weight
        if rest[0] == "dfl":
            return None
        branch, level, *rest = rest
        return ".".join([_HEADS[branch], level, *(_NAMES.get(t, t) for t in rest)])
    if layer not in _LAYERS:
        raise KeyError(name)
    return ".".join([_LAYERS[layer], *(_NAMES.get(t, t) for t in rest)])


def class_branches(detect) -> list[tuple[str, ...]]:
    """The module types of each class branch of an Ultralytics ``Detect`` head, e.g. ``("Conv", "Conv", "Conv2d")``.

    The head's kind is read from these layers, not from ``Detect.legacy``: that flag is a class attribute, set by
    whichever model was built last in the process (``False`` by default since Ultralytics 8.4), so it says nothing
    about the head of a loaded file.
    """
    return [tuple(type(m).__name__ for m in branch) for branch in getattr(detect, "cv3", ())]


def read_ultralytics(path: str | Path) -> UltralyticsWeights:
    """Read an Ultralytics YOLOv8 detection checkpoint.

    Raises:
        ImportError: ``ultralytics`` is not installed (the message says how to install it).
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a YOLOv8 detection checkpoint (another layout, e.g. YOLO11 or a segmentation
            model, or a head whose class branches are not YOLOv8's :data:`YOLOV8_CLASS_BRANCH`), naming the file
            and what it holds.

    The model read is the checkpoint's ``"ema"`` where it holds one (a training checkpoint, ``last.pt``), else its
    ``"model"`` (a final or exported one, ``best.pt``, ``yolov8n.pt``).
    """
    path = Path(path)
    try:
        import ultralytics  # noqa: F401  (the pickle refers to its classes)
    except ImportError as err:
        raise ImportError(f"reading the Ultralytics checkpoint {path} needs ultralytics: {INSTALL}") from err
    if not path.is_file():
        raise FileNotFoundError(f"Ultralytics checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    layers = tuple(type(m).__name__ for m in getattr(model, "model", ()))
    if layers != YOLOV8_LAYERS:
        raise ValueError(
            f"{path}: not an Ultralytics YOLOv8 detection checkpoint (expected a 'model' of the YOLOv8 layers "
            f"{', '.join(YOLOV8_LAYERS)}; found {', '.join(layers) or type(model).__name__})"
        )
    detect = model.model[-1]
    branches = class_branches(detect)
    if getattr(detect, "one2one_cv2", None) is not None or any(b != YOLOV8_CLASS_BRANCH for b in branches):
        raise ValueError(
            f"{path}: its head is not YOLOv8's (class branches {' / '.join(', '.join(b) for b in branches)}; "
            f"YOLOv8's are {', '.join(YOLOV8_CLASS_BRANCH)}, without a one-to-one head)"
        )
    if [float(s) for s in detect.stride] != [8.0, 16.0, 32.0]:
        raise ValueError(f"{path}: strides {detect.stride.tolist()}, detloss's YOLOv8 layout has 8, 16, 32")
    stem, sppf = model.model[0].conv, model.model[9].cv2.conv
    width = stem.out_channels / 64
    state = {}
    for name, tensor in model.state_dict().items():
        target = _detloss_name(name)
        if target is None:
            if not torch.equal(tensor.float().flatten(), torch.arange(detect.reg_max, dtype=torch.float32)):
                raise ValueError(f"{path}: {name} is not the fixed DFL integral 0..{detect.reg_max - 1}")
            continue
        state[target] = tensor.float() if tensor.is_floating_point() else tensor.clone()
    return UltralyticsWeights(
        state=state,
        num_classes=int(detect.nc),
        width=width,
        depth=len(model.model[4].m) / 6,  # the second C2f repeats round(6 · depth) bottlenecks
        max_channels=round(sppf.out_channels / width),
        reg_max=int(detect.reg_max),
        cls_hidden=int(detect.cv3[0][0].conv.out_channels),
        in_channels=int(stem.in_channels),
        path=path,
    )
