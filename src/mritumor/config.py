"""The training API's configuration: one dataclass per task, built from flag values by name.

``mritumor pretrain``, ``train-hierarchical`` and ``train-multitask`` hand the tasks a
:class:`PretrainConfig`, :class:`HierarchicalConfig` or :class:`MultitaskConfig`; each holds a
:class:`DataConfig` (what :func:`mritumor.data.loading.prepare.prepare_data_for` reads), a
:class:`TrainerConfig` (what :func:`mritumor.training.build_trainer` and the device-data choice
read) and the task's own fields. Field names and defaults are the flags' (``--batch_size`` →
``batch_size``), so:

* :meth:`FlagConfig.from_flags` fills every field from a flat mapping of flag values (e.g.
  ``vars(args)``) by name, the nested dataclasses from the same mapping, and ignores the keys it
  has no field for (a new flag needs only a field here);
* :meth:`FlagConfig.to_flat` gives the flat mapping back (what ``config.yaml`` and the
  checkpoints' ``config`` entry hold).

Imports neither torch nor Lightning nor the command line: building a configuration is cheap.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mritumor import runfiles

T = TypeVar("T", bound="FlagConfig")

# Keys of the parsed command line that are no flag of a run: argparse's dispatch and the
# parser itself (cli.build_parser sets ``_command_parser``).
INTERNAL_KEYS = ("handler",)
# Flag values config.yaml leaves out: which command ran, the --config file itself (the YAML is
# the configuration), and output verbosity, none of which change what a run computes.
NOT_SAVED = ("handler", "config", "command", "data_command", "quiet")
SCALARS = (str, int, float, bool, type(None))


def flag_values(values: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A plain dict of flag values from a mapping, a parsed ``argparse.Namespace`` or a
    configuration, without the parser's internal keys."""
    if isinstance(values, FlagConfig):
        return values.to_flat()
    if not isinstance(values, Mapping):
        values = vars(values)
    return {k: v for k, v in values.items() if not k.startswith("_") and k not in INTERNAL_KEYS}


class FlagConfig:
    """Building from, and flattening to, a mapping of flag names to values (for dataclasses)."""

    @classmethod
    def from_flags(cls: type[T], flags: Mapping[str, Any], defaults: T | None = None) -> T:
        """Every field from ``flags`` by name; a field that is a :class:`FlagConfig` is built
        from the same mapping. Missing keys keep the default (``defaults``' values if given),
        unknown keys are ignored."""
        base = defaults if defaults is not None else cls()
        values = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]  # subclasses are dataclasses
            current = getattr(base, item.name)
            if isinstance(current, FlagConfig):
                values[item.name] = type(current).from_flags(flags, current)
            elif item.name in flags:
                values[item.name] = flags[item.name]
            else:
                values[item.name] = current
        return cls(**values)

    def to_flat(self) -> dict[str, Any]:
        """Flag name → value, nested configurations merged in. A name held by two of them
        (``seed``: the split's and the trainer's) must have one value."""
        flat: dict[str, Any] = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            value = getattr(self, item.name)
            parts = value.to_flat() if isinstance(value, FlagConfig) else {item.name: value}
            for key, part in parts.items():
                if key in flat and flat[key] != part:
                    raise ValueError(
                        f"{type(self).__name__}: --{key} is {flat[key]!r} in one part and "
                        f"{part!r} in another; a flag has one value"
                    )
                flat[key] = part
        return flat

    def scalar_flags(self) -> dict[str, Any]:
        """The flat values that are plain scalars (what checkpoints record as ``config``)."""
        return {
            k: v
            for k, v in self.to_flat().items()
            if isinstance(v, SCALARS)
            or (isinstance(v, list) and all(isinstance(x, SCALARS) for x in v))
        }


@dataclass
class DataConfig(FlagConfig):
    """What :func:`mritumor.data.loading.prepare.prepare_data` takes: source, preprocessing, split."""

    data_root: str | Path | list | None = None  # a list: several sources (--data_root twice)
    source_name: list | None = None  # one name per data_root (--source_name)
    sources: str | None = None  # a YAML file of sources (mritumor.data.reading.sources)
    sequence: str | None = None  # MR sequence of rows whose source does not say (--sequence)
    format: str | None = None
    strict: bool = False
    image_size: int = 224
    channels: int | None = None
    intensity: str = "percentile"
    cache_dir: str | Path | None = None
    split_file: str | Path | None = None
    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 0
    split_seed: int | None = None  # None: the split follows --seed (the behaviour before it)
    group_by: str | None = None

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class TrainerConfig(FlagConfig):
    """Where and how Lightning trains (:func:`mritumor.training.build_trainer`) and where the
    training slices live (:func:`mritumor.data.loading.fast_path.training_data_device`)."""

    accelerator: str = "auto"
    devices: str = "1"
    num_nodes: int = 1
    # gpu-bf16 | auto | 32 | bf16 | a Lightning precision (mritumor.training.resolve_precision)
    precision: str = "gpu-bf16"
    num_workers: int = -1
    deterministic: bool = False
    resume: bool = False
    data_on_device: str = "auto"
    quiet: bool = False
    seed: int | None = 0
    logger: str = "csv"
    tracking_uri: str | None = None


@dataclass
class PretrainConfig(FlagConfig):
    """``mritumor pretrain`` (:func:`mritumor.tasks.ssl.pretrain`)."""

    outdir: str | None = None
    encoder: str = "mobilenet_v2"
    pretrained: bool = False
    projection_dim: int = 128
    temperature: float = 0.5
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    positive_pairs: str = "augment"
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # recorded with the run: the command, and where its values came from
    command: str = "pretrain"
    config: str | None = None
    recipe: str | None = None


@dataclass
class HierarchicalConfig(FlagConfig):
    """``mritumor train-hierarchical`` (:func:`mritumor.tasks.hierarchical.train_hierarchical`)."""

    outdir: str | None = None
    epochs: int = 40
    batch_size: int = 2
    bag_size: int = 8
    bag_policy: str = "uniform"
    bag_slices: str = "all"
    backbone: str = "mobilenet_v2"
    ssl_ckpt: str | None = None
    freeze_backbone: bool = False
    pooling: str = "attention"
    pretrained: bool = False
    augment: str = "standard"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    dropout: float = 0.25
    grade_weight: float = 1.0
    balance: str = "weights"
    monitor: str = "val_loss"
    patience: int = 8
    cv: int = 0
    n_boot: int = 1000
    coverage: float = 0.9
    conformal_method: str = "lac"
    conformal_mondrian: bool = False
    no_calibration: bool = False
    channels_last: bool = True
    label_fraction: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    command: str = "train-hierarchical"
    config: str | None = None
    recipe: str | None = None


@dataclass
class MultitaskConfig(FlagConfig):
    """``mritumor train-multitask`` (:func:`mritumor.tasks.multitask.train_multitask`)."""

    outdir: str | None = None
    variant: str = "all"
    backbone: str = "fcn_resnet50"
    decoder: str = "unet"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    ema_decay: float = 0.0
    seg_loss: str = "dice_ce"
    seg_weight: float = 1.0
    cls_weight: float = 1.0
    hidden_dim: int = 256
    dropout: float = 0.2
    augment: str = "light"
    balance: str = "weights"
    monitor: str = "val_loss"
    patience: int = 8
    pretrained: bool = False
    ssl_ckpt: str | None = None
    seg_ckpt: str | None = None
    n_boot: int = 1000
    coverage: float = 0.9
    conformal_method: str = "lac"
    conformal_mondrian: bool = False
    n_overlays: int = 8
    no_calibration: bool = False
    channels_last: bool = True
    cv_by: str = "none"
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=256))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    command: str = "train-multitask"
    config: str | None = None
    recipe: str | None = None


@dataclass
class AdaptConfig(FlagConfig):
    """The flags of ``mritumor adapt`` (:mod:`mritumor.commands.adapt`), by name."""

    checkpoint: str = ""
    site_root: str = ""
    outdir: str = ""
    format: str | None = None
    strict: bool = False
    unlabelled: str = "adabn"
    tent_steps: int = 10
    lr: float = 1e-3
    labelled_per_class: int = 0
    holdout_share: float = 0.4
    finetune: str | None = None  # None: head when labelled_per_class > 0, else none
    epochs: int = 30
    patience: int = 5
    weight_decay: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    coverage: float | None = None  # None: the checkpoint's
    conformal_method: str | None = None
    conformal_mondrian: bool = False
    no_refit_uncertainty: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    quiet: bool = False


def save_resolved_config(config: FlagConfig | Mapping[str, Any] | Any, outdir: str | Path) -> Path:
    """The configuration a run actually used, as ``OUTDIR/config.yaml`` whose keys are flag
    names, for reproduction with ``--config``. ``config``: a configuration, or the flag values
    (a mapping or a parsed ``argparse.Namespace``) of a command without one."""
    values = {k: v for k, v in flag_values(config).items() if k not in NOT_SAVED}
    path = Path(outdir) / runfiles.CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(values, default=str)), sort_keys=True))
    return path
