"""What ``predict`` needs to know about a model besides its network, in plain Python values.

A :class:`~mritumor.models.loading.LoadedModel` carries it with its torch network; a
:class:`ModelCard` carries the same attributes (the ones :class:`~mritumor.inference.predictor.
Predictor` reads) without torch, written beside a cached ONNX model so that a later
``predict`` neither loads the checkpoint nor imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mritumor.inference.sequences import trained_sequences


@dataclass(frozen=True)
class Labels:
    types: tuple[str, ...]
    grades: tuple[str, ...]


@dataclass(frozen=True)
class Prep:
    """The fields of :class:`mritumor.data.loading.cache.Preprocessing` (which imports torch)."""

    image_size: int
    channels: int
    clip_low: float
    clip_high: float
    intensity: str = "percentile"  # cards cached before the option existed: the old method


@dataclass(frozen=True)
class ModelCard:
    task: str  # "hierarchical" | "multitask"
    labels: Labels
    preprocessing: Prep
    temperature: float
    path: Path
    classifies: bool
    segments: bool
    bag_size: int | None = None
    bag_policy: str | None = None
    variant: str | None = None
    # the MR sequences of the training data (training_data.sequences; [] when not recorded)
    trained_sequences: list[str] = field(default_factory=list)
    # the checkpoint's OOD/conformal state: arrays in ``KEY.uncertainty.npz`` beside the card
    uncertainty: dict | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_loaded(cls, loaded) -> ModelCard:
        prep = loaded.preprocessing
        return cls(
            task=loaded.task,
            labels=Labels(tuple(loaded.labels.types), tuple(loaded.labels.grades)),
            preprocessing=Prep(
                prep.image_size, prep.channels, prep.clip_low, prep.clip_high, prep.intensity
            ),
            temperature=float(loaded.temperature),
            path=Path(loaded.path),
            classifies=loaded.classifies,
            segments=loaded.segments,
            bag_size=loaded.bag_size,
            bag_policy=loaded.bag_policy,
            variant=loaded.variant,
            trained_sequences=trained_sequences(loaded.checkpoint),
        )

    def to_dict(self) -> dict:
        values = asdict(self)
        values.pop("uncertainty")
        values["path"] = str(self.path)
        return values

    @classmethod
    def from_dict(cls, values: dict, path: str | Path) -> ModelCard:
        """``path``: the checkpoint as named now (the cached card may have been written for
        an identical copy elsewhere)."""
        labels = values["labels"]
        return cls(
            **{
                k: v
                for k, v in values.items()
                if k not in ("labels", "preprocessing", "path", "uncertainty")
            },
            labels=Labels(tuple(labels["types"]), tuple(labels["grades"])),
            preprocessing=Prep(**values["preprocessing"]),
            path=Path(path),
        )

    def describe(self) -> str:
        if self.task == "hierarchical":
            return "a hierarchical (type → grade) checkpoint"
        return f"a multi-task checkpoint of variant {self.variant}"
