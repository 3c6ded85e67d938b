"""Fine-tuning config: one frozen dataclass per mode (SLF / ALF / AFF) + the authors' presets.

Each mode has its own section, so ``--mode ALL`` runs SLF, ALF and AFF with exactly the
settings of their sections: nothing set for one mode leaks into the next (the authors mutate a
shared ``args``, spec Q5). ``preset_cascade: true`` reproduces that leak on purpose.

Presets (spec §6.1 table, ``setup_hyperparameter``): ``preset_dict(method, dataset, resize)``
gives each mode's (batch_size, lr, milestones, epochs) for pre-training method ACL, DynACL,
ACL-AIR, DynACL-AIR, DynACL-AIR++ (+ aliases ACL_RCS, DynACL++, DynACL_RCS) and the downstream
dataset cifar10 / cifar100 / stl10 (resize 96 or 32). Unlisted (dataset, mode) pairs keep the
authors' CLI defaults (epochs 25, batch 128, lr 0.1, milestones 15,20); in cascade mode they
keep the previous mode's values, exactly like the shared ``args``.

Resolution order: dataclass defaults < preset < YAML file < dotted CLI overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.config import (
    AttackConfig,
    ConfigError,
    ModelConfig,
    RunConfig,
    ScalingConfig,
    apply_overrides,
    blame,
    check_uri,
    config_hash,
    from_dict,
    load_yaml,
)
from pipeline.eval.robust import EvalConfig

MODES: tuple[str, ...] = ("SLF", "ALF", "AFF")


def _check_mode(section: str, cfg: Any) -> None:
    if not cfg.lr > 0:
        raise ConfigError(f"{section}.lr must be > 0, got {cfg.lr}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"{section}.epochs and {section}.batch_size must be >= 1")
    if any(m < 1 for m in cfg.milestones):
        raise ConfigError(f"{section}.milestones must be epochs >= 1, got {list(cfg.milestones)}")


@dataclass(frozen=True)
class SLFConfig:
    """Standard linear fine-tuning: frozen encoder in eval mode, clean CE on the classifier."""

    epochs: int = 25  # authors' CLI defaults (overridden by every preset)
    batch_size: int = 128
    lr: float = 0.1
    milestones: tuple[int, ...] = (15, 20)  # MultiStepLR, gamma 0.1, stepped per epoch
    momentum: float = 0.9
    weight_decay: float = 2e-4
    classifier_init: Literal["zeros", "random"] = "zeros"  # zeros: CIFAR/STL (Q11)
    eval_branch: str = "pgd"  # BN branch kept for the single-BN model (Q12)
    # Standardise each frozen feature with training-set mean/std before the Linear (folded into
    # it afterwards). False = the authors' raw features (their recipes set it); True keeps the
    # probe of an unnormalised encoder (e.g. a random one) from diverging at lr 0.1.
    standardize: bool = True

    def __post_init__(self) -> None:
        _check_mode("slf", self)


@dataclass(frozen=True)
class ALFConfig:
    """Adversarial linear fine-tuning: frozen encoder, CE on PGD-10 examples (eval mode)."""

    epochs: int = 25
    batch_size: int = 128
    lr: float = 0.1
    milestones: tuple[int, ...] = (15, 20)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    classifier_init: Literal["zeros", "random"] = "zeros"
    eval_branch: str = "pgd"
    standardize: bool = True  # as SLFConfig.standardize
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=10))  # uniform start

    def __post_init__(self) -> None:
        _check_mode("alf", self)


@dataclass(frozen=True)
class AFFConfig:
    """Adversarial full fine-tuning with TRADES (beta 6), dual-BN by default (--dualBN 1)."""

    epochs: int = 25
    batch_size: int = 128
    lr: float = 0.1
    milestones: tuple[int, ...] = (15, 20)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    classifier_init: Literal["zeros", "random"] = "zeros"
    eval_branch: str = "pgd"  # dual-BN model -> single BN through this branch after training
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=10))  # start 0.001 N(0,1)
    beta: float = 6.0  # TRADES weight (hard-coded 6 in the released code)
    dual_bn: bool = True  # natural through 'normal', adversarial through 'pgd'
    nat_bn: str = "normal"
    adv_bn: str = "pgd"

    def __post_init__(self) -> None:
        _check_mode("aff", self)


@dataclass(frozen=True)
class FinetuneDataConfig:
    train_manifest: str = ""  # data-plane manifest URI of the downstream train split
    test_manifest: str = ""  # "" = split train_manifest deterministically by index
    test_fraction: float = 0.2  # only when test_manifest == ""
    split_seed: int = 0
    dataset: Literal["cifar10", "cifar100", "stl10", "other"] = "cifar10"  # preset key
    resize: int = 32  # STL-10: 96 or 32 (preset key; images are used at their stored size)
    num_classes: int = 0  # 0 = max(train label) + 1
    max_train: int = 0  # >0: first n training examples only (smoke runs)
    s3_endpoint: str = ""
    stream_above: int = 200_000  # larger training sets are streamed shard by shard; 0 = always
    shuffle_buffer: int = 20_000  # rows in the streaming shuffle buffer (+ one shard)

    def __post_init__(self) -> None:
        check_uri("data.train_manifest", self.train_manifest)
        check_uri("data.test_manifest", self.test_manifest)


@dataclass(frozen=True)
class FinetuneTrainConfig:
    seed: int = 1
    log_every: int = 0  # steps between progress lines; 0 = 4 per epoch (authors' int(L/4))
    max_steps_per_epoch: int = 0  # >0 truncates epochs (smoke tests)
    padding: int = 4  # RandomCrop padding of finetune_augment
    # --mode ALL with Ray and at most one worker per mode: SLF / ALF / AFF as concurrent Ray tasks
    # (scaling.cpus_per_worker CPUs, one GPU each with scaling.use_gpu); false = one after another
    concurrent_modes: bool = True


@dataclass(frozen=True)
class FinetuneConfig:
    mode: Literal["SLF", "ALF", "AFF", "ALL"] = "ALL"
    preset: str = ""  # pre-training method: ACL | DynACL | ACL-AIR | DynACL-AIR | DynACL-AIR++
    preset_cascade: bool = False  # True = the authors' shared-args leak across --mode ALL
    checkpoint: str = ""  # our export (load_encoder) or the authors' file, auto-detected
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture for authors' files
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    slf: SLFConfig = field(default_factory=SLFConfig)
    alf: ALFConfig = field(default_factory=ALFConfig)
    aff: AFFConfig = field(default_factory=AFFConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    scaling: ScalingConfig = field(default_factory=lambda: ScalingConfig(num_workers=0))
    run: RunConfig = field(default_factory=RunConfig)

    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == "ALL" else (self.mode,)

    def mode_config(self, mode: str) -> SLFConfig | ALFConfig | AFFConfig:
        return {"SLF": self.slf, "ALF": self.alf, "AFF": self.aff}[mode]

    def run_name(self) -> str:
        return self.run.name or f"finetune-{self.mode.lower()}-{config_hash(self)}"


# ----------------------------------------------------------------------------------------------
# The authors' setup_hyperparameter table (spec §6.1)
# ----------------------------------------------------------------------------------------------

CLI_DEFAULTS: dict[str, Any] = {"epochs": 25, "batch_size": 128, "lr": 0.1, "milestones": [15, 20]}
ALIASES = {"ACL_RCS": "ACL", "DynACL++": "DynACL", "DynACL_RCS": "DynACL"}
METHODS: tuple[str, ...] = ("ACL", "DynACL", "ACL-AIR", "DynACL-AIR", "DynACL-AIR++")

_ACL_LINEAR = {"cifar10": (512, 0.01), "cifar100": (512, 0.05), "stl10@96": (512, 0.1),
               "stl10@32": (128, 0.01)}
# method -> mode -> {dataset key: (batch, lr)} or "*" for every dataset; extras set beside them.
_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "ACL": {
        "SLF": {"sets": _ACL_LINEAR, "milestones": [10, 20]},
        "ALF": {"sets": _ACL_LINEAR, "milestones": [10, 20]},
        "AFF": {"sets": {"*": (128, 0.1)}, "milestones": [40, 60], "epochs": 100},
    },
    "DynACL": {
        "SLF": {"sets": _ACL_LINEAR, "milestones": [10, 20]},
        "ALF": {"sets": _ACL_LINEAR, "milestones": [10, 20]},
        "AFF": {"sets": {"*": (128, 0.1)}, "milestones": [15, 20],
                "milestones_by_set": {"stl10@96": [10, 20]}},
    },
    "ACL-AIR": {
        "SLF": {"sets": {"cifar10": (512, 0.005), "cifar100": (512, 0.1), "stl10@96": (512, 0.01),
                         "stl10@32": (128, 0.01)}, "milestones": [10, 20]},
        "ALF": {"sets": {"cifar10": (512, 0.01), "cifar100": (512, 0.1), "stl10@96": (512, 0.01),
                         "stl10@32": (128, 0.01)}, "milestones": [10, 20]},
        "AFF": {"sets": {"*": (128, 0.1)}, "milestones": [40, 60], "epochs": 100},
    },
    "DynACL-AIR": {
        "SLF": {"sets": {"cifar10": (512, 0.01), "cifar100": (512, 0.1), "stl10@96": (512, 0.1),
                         "stl10@32": (128, 0.01)}, "milestones": [10, 20],
                "epochs_by_set": {"cifar10": 5}},
        "ALF": {"sets": {"cifar10": (512, 0.01), "cifar100": (512, 0.1), "stl10@32": (128, 0.01),
                         "stl10@96": (128, 0.1)}, "milestones": [10, 20]},
        "AFF": {"sets": {"*": (128, 0.1)}, "milestones": [15, 20]},
    },
    "DynACL-AIR++": {
        "SLF": {"sets": {"cifar10": (512, 0.01), "cifar100": (512, 0.1), "stl10@96": (512, 0.1)},
                "milestones": [10, 20]},
        "ALF": {"sets": {"cifar10": (512, 0.01), "cifar100": (512, 0.1), "stl10@96": (128, 0.1)},
                "milestones": [10, 20], "epochs_by_set": {"cifar10": 4}},
        # (c10 also sets a misspelled args.epoch = 19 there: no effect, not reproduced)
        "AFF": {"sets": {"*": (128, 0.1)}, "milestones": [15, 20]},
    },
}


def dataset_key(dataset: str, resize: int = 32) -> str:
    return f"stl10@{96 if resize == 96 else 32}" if dataset == "stl10" else dataset


def authors_changes(method: str, mode: str, dataset: str, resize: int = 32) -> dict[str, Any]:
    """What setup_hyperparameter assigns for (method, mode, dataset); {} when nothing matches."""
    m = ALIASES.get(method, method)
    if m not in _TABLE:
        raise ConfigError(f"preset: unknown pre-training method {method!r}; known: "
                          f"{list(METHODS) + list(ALIASES)}")
    row = _TABLE[m][mode]
    key = dataset_key(dataset, resize)
    bl = row["sets"].get(key, row["sets"].get("*"))
    if bl is None:
        return {}
    out: dict[str, Any] = {"batch_size": bl[0], "lr": bl[1],
                           "milestones": list(row.get("milestones_by_set", {}).get(key, row["milestones"]))}
    if "epochs" in row:
        out["epochs"] = row["epochs"]
    if key in row.get("epochs_by_set", {}):
        out["epochs"] = row["epochs_by_set"][key]
    return out


def preset_dict(method: str, dataset: str, resize: int = 32, *, cascade: bool = False) -> dict[str, Any]:
    """{"slf": {...}, "alf": {...}, "aff": {...}} for a FinetuneConfig (see module docstring).

    cascade=False: each mode = CLI defaults + its own changes (no leak).
    cascade=True: a shared state updated mode after mode (SLF, ALF, AFF), as the authors' args.
    """
    out: dict[str, Any] = {}
    state = dict(CLI_DEFAULTS)
    for mode in MODES:
        ch = authors_changes(method, mode, dataset, resize)
        if cascade:
            state.update(ch)
            vals = dict(state)
        else:
            vals = {**CLI_DEFAULTS, **ch}
        out[mode.lower()] = {k: (list(v) if isinstance(v, list) else v) for k, v in vals.items()}
    for mode in ("slf", "alf"):
        out[mode]["standardize"] = False  # the authors probe raw features
    return out


def _deep_merge(base: dict, top: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_finetune_config(path: str | Path | None = None, overrides: list[str] = ()) -> FinetuneConfig:
    """YAML (optional) + overrides, with the preset (if any) applied underneath both."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        data = load_yaml(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    first = apply_overrides(data, list(overrides), FinetuneConfig)
    try:
        cfg = from_dict(FinetuneConfig, first)
        if not cfg.preset:
            return cfg
        base = preset_dict(cfg.preset, cfg.data.dataset, cfg.data.resize, cascade=cfg.preset_cascade)
        merged = apply_overrides(_deep_merge(base, data), list(overrides), FinetuneConfig)
        return from_dict(FinetuneConfig, merged)
    except ConfigError as e:
        raise blame(e, path, overrides) from None
