"""``detloss-predict ckpt_path=CKPT input=DIR_OR_FILE [output=DIR] [overrides]``: predict images with a checkpoint.

The checkpoint carries its run's config and what the model knows of its data (class names, the data's own
category ids, image size and channels), so nothing else is needed: the task is rebuilt from it
(:func:`detloss.config.checkpoint_arguments`; the command line still wins), its weights loaded (a detector's moving
average, which validation scores, when it has one), and every input is brought to the model's size as the
validation transforms bring it, predicted, mapped back to the input's own pixels and written by the writer of the
checkpoint's kind of data (:mod:`detloss.prediction`), with a progress bar.

``input`` is an image file, a folder (its image files, sorted by name; hidden files left out), or a COCO JSON file
whose ``images`` give the files (relative to ``predict.image_dir``, by default the JSON's folder), their
``file_name`` and ``image_id``. Volumes are NIfTI files: Decathlon 4D images or nnU-Net channel files, one label
map per case written in the input's geometry. Results go to ``output`` (by default the run directory,
``outputs/<task>/predict/<time>/``). ``predict.tta=true`` mirrors the input as nnU-Net does (segmentation and
volumes).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from .config import CHECKPOINT_DATA, CONFIG_SOURCE, checkpoint_arguments, read_checkpoint
from .data.base import list_images
from .launch import VALUE_FLAGS
from .prediction import WRITERS, Item
from .train import build, build_task

__all__ = ["predict", "list_inputs", "load_task", "main"]


def list_inputs(source: str | Path, extensions: tuple[str, ...], image_dir: str | Path | None = None) -> list[Item]:
    """The inputs ``source`` names: one file, a folder's files of ``extensions`` (sorted), or a COCO JSON's images.

    Raises:
        FileNotFoundError: ``input`` (or a COCO file's image, naming it) does not exist.
        ValueError: a folder without such files, or a COCO JSON without an ``images`` list of ``id`` and
            ``file_name``.
    """
    path = Path(source)
    if path.is_dir():
        files = [p for p in list_images(path) if p.suffix.lower() in extensions] if extensions else []
        files = files or sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(extensions))
        files = [p for p in files if not p.name.startswith(".")]  # hidden files (macOS "._" copies in archives)
        if not files:
            raise ValueError(f"input: no files of {', '.join(extensions)} in {path}")
        return [Item(p, p.name, p.name) for p in files]
    if not path.is_file():
        raise FileNotFoundError(f"input: no file or folder at {path}")
    if path.suffix.lower() != ".json":
        return [Item(path, path.name, path.name)]
    try:
        images = json.loads(path.read_text(encoding="utf-8")).get("images")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"input: {path} is not a COCO JSON object: {err}") from err
    if not isinstance(images, list) or not all(isinstance(i, dict) and {"id", "file_name"} <= i.keys() for i in images):
        raise ValueError(f"input: {path} needs an 'images' list of {{'id', 'file_name'}} entries")
    folder = Path(image_dir) if image_dir is not None else path.parent
    items = [Item(folder / i["file_name"], str(i["file_name"]), i["id"]) for i in images]
    missing = [item.path for item in items if not item.path.is_file()]
    if missing:
        raise FileNotFoundError(f"input: {path}: image file not found: {missing[0]} (predict.image_dir={folder})")
    return items


def load_task(cfg: DictConfig, checkpoint: Mapping[str, Any]):
    """The task of ``cfg`` with ``checkpoint``'s weights, in eval mode, and the data description it was built for
    (the checkpoint's; for a checkpoint without one, the configured DataModule's)."""
    data = checkpoint.get(CHECKPOINT_DATA)
    if data is None:
        datamodule, task = build(cfg, pretrained=False)
        data = datamodule.describe()
    else:
        task = build_task(cfg, data, pretrained=False)
    task.load_state_dict(checkpoint["state_dict"])
    task.on_load_checkpoint(dict(checkpoint))
    return task.eval(), data


def predict(cfg: DictConfig, checkpoint: Mapping[str, Any]) -> Path:
    """Predict ``cfg.input`` with ``checkpoint`` (``cfg`` already rebuilt on its config); the output folder."""
    task, data = load_task(cfg, checkpoint)
    kind = data.get("kind")
    if kind not in WRITERS:
        raise ValueError(f"ckpt_path: no prediction writer for data of kind {kind!r} (known: {sorted(WRITERS)})")
    options = dict(cfg.predict)
    if not isinstance(options.get("tta", False), bool):
        raise ValueError(f"predict.tta must be true or false, got {options['tta']!r}")
    if options.get("tta") and kind == "detection":
        raise ValueError("predict.tta: mirroring test-time augmentation is for segmentation and volumes, not boxes")
    writer_class = WRITERS[kind]
    items = list_inputs(cfg.input, writer_class.extensions, options.get("image_dir"))
    out_dir = Path(cfg.output if cfg.get("output") else cfg.paths.output_dir)
    writer = writer_class(task, data, out_dir, options)
    for item in tqdm(items, desc="detloss-predict", unit="image", disable=not options.get("progress", True)):
        writer(item)
    writer.close()
    print(f"detloss: {len(items)} inputs predicted into {out_dir}", flush=True)
    return out_dir


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="predict")
def _app(cfg: DictConfig) -> None:
    predict(cfg, read_checkpoint(cfg.ckpt_path))


def main() -> None:
    """``detloss-predict``: the checkpoint's config becomes the default of its groups, then Hydra composes."""
    sys.argv = [sys.argv[0], *checkpoint_arguments(sys.argv[1:], VALUE_FLAGS)]
    _app()


if __name__ == "__main__":
    main()
