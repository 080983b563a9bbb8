"""nnU-Net v2's own plan of a dataset, computed offline: the reference detloss's planner (``detloss/plan/``) is
compared with.

    python tools/nnunet_plan.py DATASET_DIR                       # the 3d_fullres plan as a table
    python tools/nnunet_plan.py DATASET_DIR --json                # everything nnunet_plan returns, as JSON
    python tools/nnunet_plan.py DATASET_DIR --configuration 2d    # the 2d plan instead

``DATASET_DIR`` is a dataset in the nnU-Net v2 raw layout: ``dataset.json`` (``channel_names``, ``labels``,
``numTraining``, ``file_ending``), ``imagesTr/<case>_<XXXX><file_ending>`` (one file a channel) and
``labelsTr/<case><file_ending>``. :func:`nnunet_plan` runs nnU-Net's fingerprint extraction
(``DatasetFingerprintExtractor``) and its default experiment planner (``ExperimentPlanner``, or another planner class
named) on it, without preprocessing any data and without network access: the dataset is linked (or, where links are
not possible, copied) as ``nnUNet_raw/Dataset999_<name>`` into a ``tempfile.TemporaryDirectory`` and the
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` environment variables point into it while nnU-Net runs
(nnunetv2 2.8 reads them when it uses them, not when it is imported); they are restored afterwards, and nothing is
written beside the dataset. It needs ``pip install nnunetv2`` (the ``tools`` extra); SimpleITK, nnU-Net's reader for
``.nii.gz``, comes with it.

Axis order. nnU-Net's readers (``SimpleITKIO``, chosen for ``.nii.gz``, and ``NibabelIO``) give a NIfTI volume whose
file axes are ``(x, y, z)`` as an array ``(z, y, x)`` and its spacing in the same order; that is detloss's ``(D, H, W)``
(:func:`detloss.data.read_volume`), so nnU-Net's fingerprint is already in detloss's order. Its plans are not:
the planner first permutes the axes by ``transpose_forward`` (the axis of the coarsest target spacing first, the other
two after it in their order), and every per-axis value of a configuration (``spacing``, ``patch_size``,
``median_image_size_in_voxels``, the strides and kernel sizes) is in that permuted order. :func:`nnunet_plan` permutes
them back to ``(D, H, W)`` for the 3D configurations; a 2D configuration's values are for the two axes other than
``transpose_forward[0]``, in ``(D, H, W)`` order, and ``axes`` names them. The configuration as nnU-Net wrote it (its
own axis order) is kept under ``nnunet_configuration``.

Fingerprint extraction runs in this process by default (``num_processes=0``): nnU-Net's own pool of ``spawn`` workers
costs several seconds a worker to start, far more than the few small cases of a test take to read. Give
``num_processes >= 1`` to use nnU-Net's pool as it is (then a calling script needs an ``if __name__ == "__main__"``
guard, as ``spawn`` re-imports it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

CONFIGURATIONS = ("3d_fullres", "3d_lowres", "2d")
AXES = ("D", "H", "W")
_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA")
_INTENSITY_KEYS = ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")


# -- running nnU-Net's planner --------------------------------------------------------------------------------------


class _Finished:
    """What ``starmap_async`` returns: already done."""

    def __init__(self, value):
        self._value = value

    def ready(self) -> bool:
        return True

    def get(self):
        return self._value


class _InlinePool:
    """Stands in for the process pools nnU-Net opens around its fingerprint (the ``spawn`` pool of
    ``DatasetFingerprintExtractor.run``, the ``fork`` pool of 12 that ``create_lists_from_splitted_dataset_folder`` in
    ``nnunetv2.utilities.utils`` opens to match file names): the work runs at once, here, and an error in it is raised
    as itself (not as nnU-Net's "background worker" message)."""

    _pool: list = []  # the extractor checks that its workers are alive; there are none

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def starmap(self, fn, iterable) -> list:
        return [fn(*args) for args in iterable]

    def starmap_async(self, fn, iterable) -> _Finished:
        return _Finished(self.starmap(fn, iterable))


@contextlib.contextmanager
def _pools_in_this_process(enabled: bool):
    """While open (and ``enabled``), nnU-Net's fingerprint opens no worker processes (see :class:`_InlinePool`)."""
    if not enabled:
        yield
        return
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.utilities import utils

    inline_mp = SimpleNamespace(get_context=lambda *a, **k: SimpleNamespace(Pool=_InlinePool))
    wanted = [(fingerprint_extractor, "multiprocessing", inline_mp), (utils, "Pool", _InlinePool)]
    swaps = [(module, attr, value, getattr(module, attr)) for module, attr, value in wanted if hasattr(module, attr)]
    for module, attr, value, _ in swaps:
        setattr(module, attr, value)
    try:
        yield
    finally:
        for module, attr, _, real in swaps:
            setattr(module, attr, real)


def _check_raw_dir(raw_dir: Path) -> dict:
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw_dir {raw_dir}: not a directory (a dataset in the nnU-Net v2 raw layout)")
    meta_path = raw_dir / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing (nnU-Net's dataset.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise ValueError(f"{meta_path}: not JSON: {err}") from None
    missing = [k for k in ("labels", "numTraining", "file_ending") if k not in meta]
    if "channel_names" not in meta and "modality" not in meta:
        missing.insert(0, "channel_names")
    if missing:
        raise ValueError(f"{meta_path}: lacks {', '.join(missing)}")
    if "dataset" not in meta and not (raw_dir / "imagesTr").is_dir():
        raise FileNotFoundError(f"{raw_dir / 'imagesTr'}: missing")
    return meta


def _dataset_name(raw_dir: Path) -> str:
    if re.fullmatch(r"Dataset\d{3}_\w+", raw_dir.name):
        return raw_dir.name
    return "Dataset999_" + (re.sub(r"\W+", "_", raw_dir.name).strip("_") or "data")


def _to_ours(values, transpose_forward: Sequence[int], configuration: str):
    """One per-axis list from nnU-Net's permuted order to ``(D, H, W)`` (3D); 2D lists are kept as they are (their
    axes are ``transpose_forward[1:]``, already in ascending order)."""
    values = list(values)
    if not configuration.startswith("3d"):
        return values
    back = [list(transpose_forward).index(axis) for axis in range(3)]
    return [values[k] for k in back]


def _plain(value):
    """JSON-plain copy: numpy scalars and arrays become Python numbers and lists, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def nnunet_plan(
    raw_dir: str | Path,
    configuration: str = "3d_fullres",
    *,
    planner: str = "ExperimentPlanner",
    gpu_memory_target_in_gb: float | None = None,
    num_processes: int = 0,
    intensity_samples: int | None = None,
    verbose: bool = False,
) -> dict:
    """nnU-Net v2's fingerprint and plan of the dataset at ``raw_dir`` (nnU-Net v2 raw layout), offline.

    ``configuration``: ``"3d_fullres"`` (default), ``"2d"``, or ``"3d_lowres"`` where nnU-Net makes one (when the
    3d_fullres patch covers less than a quarter of the median image). ``planner``: the class name of an nnU-Net
    experiment planner (``ExperimentPlanner``, nnU-Net's original default; or e.g. ``nnUNetPlannerResEncM``).
    ``gpu_memory_target_in_gb``: the planner's VRAM target (``None``: the planner's own default, 8 GB for
    ``ExperimentPlanner``). ``num_processes``: 0 extracts the fingerprint in this process, ``n >= 1`` in nnU-Net's own
    pools (``n`` workers). ``intensity_samples``: how many foreground voxels the intensity statistics sample in all
    (``None``: nnU-Net's 1e8, drawn with replacement, ``1e8 / cases`` a case; a test's small datasets need far fewer,
    and the sampling costs seconds). ``verbose``: let nnU-Net print (otherwise its output is kept, and shown only in
    the error raised if it fails).

    Returns a JSON-plain dict; per-axis values in detloss's ``(D, H, W)`` = ``(z, y, x)`` order (see the module's
    docstring; ``axes`` names the axes of a 2D plan):

    * the plan: ``spacing`` (target spacing, mm), ``patch_size``, ``pool_op_kernel_sizes`` (the stride of each
      stage's first convolution, one list a stage, the first all 1s), ``num_pool_per_axis``, ``conv_kernel_sizes``
      (one list a stage), ``n_stages``, ``features_per_stage``, ``batch_size``, ``batch_dice``,
      ``median_image_size_in_voxels`` (median shape after resampling to ``spacing``), ``normalization_schemes``
      and ``use_mask_for_norm`` (one a channel), ``resampling_data_kwargs``, ``resampling_seg_kwargs``;
    * the fingerprint: ``median_spacing``, ``case_spacings``, ``shapes_after_crop`` (``median``, ``min``, ``max``,
      ``per_case``), ``median_relative_size_after_cropping``, ``foreground_intensity_properties_per_channel`` (one
      dict a channel index ``"0"``, ``"1"``, ...: ``channel`` (its name), ``mean``, ``std``, ``median``, ``min``,
      ``max``, ``percentile_00_5``, ``percentile_99_5`` of the foreground voxels, as many sampled from every case, so
      that each case weighs alike);
    * about the run: ``configuration``, ``axes``, ``planner``, ``nnunetv2_version``, ``image_reader_writer``,
      ``transpose_forward`` (nnU-Net's: its axis ``k`` is detloss's axis ``transpose_forward[k]``),
      ``configurations`` (those nnU-Net planned), ``num_cases``, ``seconds`` (the wall time of fingerprint and plan),
      ``nnunet_configuration`` (the configuration as nnU-Net wrote it, in its own axis order).

    Raises ``ImportError`` without nnunetv2, ``FileNotFoundError``/``ValueError`` for a ``raw_dir`` that is not an
    nnU-Net raw dataset or an unknown ``configuration``/``planner``, ``RuntimeError`` (with nnU-Net's output) when
    nnU-Net fails. Not thread-safe: it sets process-wide environment variables while it runs.
    """
    raw_dir = Path(raw_dir).resolve()
    meta = _check_raw_dir(raw_dir)
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
    if int(num_processes) < 0:
        raise ValueError(f"num_processes must be >= 0, got {num_processes!r}")
    if intensity_samples is not None and int(intensity_samples) < 1:
        raise ValueError(f"intensity_samples must be a positive number of voxels or None, got {intensity_samples!r}")
    try:
        from importlib.metadata import version

        import nnunetv2
        from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    except ImportError as err:
        raise ImportError(f"nnunet_plan needs nnunetv2 (pip install nnunetv2): {err}") from err
    planner_class = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "experiment_planning"),
        planner,
        current_module="nnunetv2.experiment_planning",
    )
    if planner_class is None:
        raise ValueError(f"planner {planner!r}: no such class in nnunetv2.experiment_planning")

    name = _dataset_name(raw_dir)
    saved = {key: os.environ.get(key) for key in _ENV}
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="nnunet_plan_") as tmp:
            for key in _ENV[:3]:
                os.environ[key] = os.path.join(tmp, key)
                os.makedirs(os.environ[key])
            os.environ.setdefault("nnUNet_n_proc_DA", "1")  # the planner sets torch's threads to it for a moment
            link = Path(os.environ["nnUNet_raw"]) / name
            try:
                link.symlink_to(raw_dir, target_is_directory=True)
            except OSError:
                shutil.copytree(raw_dir, link)
            quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(log)
            quiet_err = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(log)
            try:
                with quiet, quiet_err, _pools_in_this_process(num_processes == 0):
                    extractor = fingerprint_extractor.DatasetFingerprintExtractor(
                        name, max(int(num_processes), 1), verbose=verbose
                    )
                    extractor.show_progress_bar = verbose
                    if intensity_samples is not None:
                        extractor.num_foreground_voxels_for_intensitystats = float(intensity_samples)
                    extractor.run(overwrite_existing=True)
                    kwargs = (
                        {} if gpu_memory_target_in_gb is None else {"gpu_memory_target_in_gb": gpu_memory_target_in_gb}
                    )
                    plans = planner_class(name, **kwargs).plan_experiment()
            except Exception as err:
                tail = log.getvalue()[-4000:]
                raise RuntimeError(
                    f"nnU-Net could not plan {raw_dir}: {type(err).__name__}: {err}"
                    + (f"\n--- nnU-Net's output (end) ---\n{tail}" if tail else "")
                ) from err
            fingerprint = json.loads(
                (Path(os.environ["nnUNet_preprocessed"]) / name / "dataset_fingerprint.json").read_text()
            )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - start

    plans = _plain(plans)
    if configuration not in plans["configurations"]:
        raise ValueError(
            f"configuration {configuration!r}: nnU-Net planned only {', '.join(plans['configurations'])} for {raw_dir}"
        )
    config = plans["configurations"][configuration]
    transpose_forward = plans["transpose_forward"]
    arch = config["architecture"]["arch_kwargs"]
    ours = lambda values: _to_ours(values, transpose_forward, configuration)  # noqa: E731
    strides = [ours(s) for s in arch["strides"]]
    axes = list(AXES) if configuration.startswith("3d") else [AXES[a] for a in transpose_forward[1:]]

    channels = meta.get("channel_names", meta.get("modality"))
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=np.int64)
    intensity = {
        str(c): {"channel": channels.get(str(c), str(c)), **{k: props[k] for k in _INTENSITY_KEYS if k in props}}
        for c, props in fingerprint["foreground_intensity_properties_per_channel"].items()
    }
    return {
        "configuration": configuration,
        "axes": axes,
        "spacing": ours(config["spacing"]),
        "patch_size": ours(config["patch_size"]),
        "pool_op_kernel_sizes": strides,
        "num_pool_per_axis": [sum(1 for s in strides if s[a] > 1) for a in range(len(axes))],
        "conv_kernel_sizes": [ours(k) for k in arch["kernel_sizes"]],
        "n_stages": arch["n_stages"],
        "features_per_stage": arch["features_per_stage"],
        "batch_size": config["batch_size"],
        "batch_dice": config.get("batch_dice"),
        "median_image_size_in_voxels": ours(config["median_image_size_in_voxels"]),
        "normalization_schemes": config["normalization_schemes"],
        "use_mask_for_norm": config["use_mask_for_norm"],
        "resampling_data_kwargs": config["resampling_fn_data_kwargs"],
        "resampling_seg_kwargs": config["resampling_fn_seg_kwargs"],
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "case_spacings": spacings.tolist(),
        "shapes_after_crop": {
            "median": np.median(shapes, axis=0).tolist(),
            "min": shapes.min(axis=0).tolist(),
            "max": shapes.max(axis=0).tolist(),
            "per_case": shapes.tolist(),
        },
        "median_relative_size_after_cropping": float(fingerprint["median_relative_size_after_cropping"]),
        "foreground_intensity_properties_per_channel": intensity,
        "planner": plans["experiment_planner_used"],
        "nnunetv2_version": version("nnunetv2"),
        "image_reader_writer": plans["image_reader_writer"],
        "transpose_forward": transpose_forward,
        "configurations": list(plans["configurations"]),
        "num_cases": int(len(shapes)),
        "seconds": round(seconds, 2),
        "nnunet_configuration": config,
    }


# -- the command line -----------------------------------------------------------------------------------------------


def format_plan(plan: dict) -> str:
    """The plan of :func:`nnunet_plan` as a short table (per-axis values in ``plan["axes"]`` order)."""
    axes = "×".join(plan["axes"])
    fmt = lambda v: "×".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)  # noqa: E731
    rows = [
        ("planner", f"{plan['planner']} (nnunetv2 {plan['nnunetv2_version']}, {plan['image_reader_writer']})"),
        ("configuration", f"{plan['configuration']} (axes {axes})"),
        ("cases", str(plan["num_cases"])),
        ("median spacing (D×H×W)", fmt(round(x, 4) for x in plan["median_spacing"])),
        ("median shape after crop", fmt(plan["shapes_after_crop"]["median"])),
        ("target spacing", fmt(round(x, 4) for x in plan["spacing"])),
        ("median shape at target", fmt(plan["median_image_size_in_voxels"])),
        ("patch size", fmt(plan["patch_size"])),
        ("poolings per axis", fmt(plan["num_pool_per_axis"])),
        ("strides", " ".join(fmt(s) for s in plan["pool_op_kernel_sizes"])),
        ("conv kernels", " ".join(fmt(k) for k in plan["conv_kernel_sizes"])),
        ("stages / features", f"{plan['n_stages']} / {fmt(plan['features_per_stage'])}"),
        ("batch size", str(plan["batch_size"])),
        ("normalisation", ", ".join(plan["normalization_schemes"])),
        ("mask for norm", ", ".join(str(m) for m in plan["use_mask_for_norm"])),
    ]
    for c, props in plan["foreground_intensity_properties_per_channel"].items():
        rows.append(
            (
                f"channel {c} ({props['channel']})",
                f"mean {props['mean']:.4g}, std {props['std']:.4g}, "
                f"0.5–99.5 % [{props['percentile_00_5']:.4g}, {props['percentile_99_5']:.4g}]",
            )
        )
    rows.append(("time", f"{plan['seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dataset_dir", help="a dataset in the nnU-Net v2 raw layout (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--configuration", default="3d_fullres", choices=CONFIGURATIONS)
    parser.add_argument("--planner", default="ExperimentPlanner", help="an nnU-Net experiment planner class name")
    parser.add_argument(
        "--gpu-memory-gb", type=float, default=None, help="the planner's VRAM target (default: its own)"
    )
    parser.add_argument("--num-processes", type=int, default=0, help="0: fingerprint in this process")
    parser.add_argument(
        "--intensity-samples", type=float, default=None, help="foreground voxels sampled in all (default: 1e8)"
    )
    parser.add_argument("--json", action="store_true", help="print everything nnunet_plan returns as JSON")
    parser.add_argument("--verbose", action="store_true", help="show nnU-Net's own output")
    args = parser.parse_args(argv)
    plan = nnunet_plan(
        args.dataset_dir,
        args.configuration,
        planner=args.planner,
        gpu_memory_target_in_gb=args.gpu_memory_gb,
        num_processes=args.num_processes,
        intensity_samples=None if args.intensity_samples is None else int(args.intensity_samples),
        verbose=args.verbose,
    )
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
