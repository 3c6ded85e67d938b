"""Typed, frozen configuration: dataclass sections, YAML files and dotted CLI overrides.

Every config in the project is a tree of frozen dataclasses. They are loaded in one pass:

    cfg = load_config(PretrainConfig, "jobs/configs/demo.yaml", ["--rcs.fraction=0.05"])

Unknown keys and values of the wrong type are rejected with a ``ConfigError`` that names the
dotted key (and the file), so a typo never silently falls back to a default. Ray workers get
``to_dict(cfg)`` and rebuild the typed object with ``from_dict`` as their first line.

No Ray imports here: this module is core.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from pipeline.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override is wrong; the message names the key and the problem."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-3`` and ``1e30`` as
    strings because they lack a dot; here they are numbers, in files and in overrides alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with the project's loader (YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


_SCHEMES = ("s3://",)


def check_uri(key: str, value: str, *, allow_empty: bool = True) -> None:
    """A storage URI is a local path or ``s3://bucket/...``; anything else names ``key``."""
    if not value:
        if allow_empty:
            return
        raise ConfigError(f"{key} is empty: pass a local path or an s3://bucket/prefix URI")
    if "://" in value and not value.startswith(_SCHEMES):
        scheme = value.split("://", 1)[0]
        raise ConfigError(f"{key}: unsupported storage scheme '{scheme}://' in {value!r}; "
                          f"use a local path or s3://bucket/prefix")
    if value.startswith("s3://") and not value[5:].split("/", 1)[0]:
        raise ConfigError(f"{key}: {value!r} names no bucket (s3://bucket/prefix)")


# ----------------------------------------------------------------------------------------------
# Generic machinery
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:  # try the next arm
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, key)
    if origin in (tuple, list):
        if isinstance(value, str):  # "--slf.milestones=15,20": items parsed like scalars (ints)
            items = [v.strip() for v in value.split(",") if v.strip() != ""]
            elem = args[0] if args and (len(args) == 1 or args[1] is Ellipsis) else None
            value = items if elem is str else [_parse_scalar(v) for v in items]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # --x.milestones=3 means (3,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if len(args) != 2:
            return dict(value)
        return {_coerce(k, args[0], f"{key} key"): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # pragma: no cover


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# keys that were renamed: named in the error instead of a bare 'unknown key'
RENAMED = {
    "train.batch_size": "train.global_batch_size (the batch across all workers; "
                        "train.batch_size was per worker: multiply it by the number of workers)",
}


def _renamed(key: str) -> None:
    if key in RENAMED:
        raise ConfigError(f"{key!r} was renamed: use {RENAMED[key]}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    for k in unknown:
        _renamed(f"{prefix}.{k}" if prefix else k)
    if unknown:
        where = f"section '{prefix}'" if prefix else f"{cls.__name__}"
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(prefix + '.' + k if prefix else k) for k in unknown)} "
            f"in {where}; known keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            value = data[f.name]
            default = _field_default(f)
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                # a partial section overrides the *field's* default (e.g. a default_factory that
                # sets num_workers=0), not the section class's own defaults
                value = _deep_merge(to_dict(default), value)
            kwargs[f.name] = _coerce(value, hints[f.name], key)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(cls: type, data: dict) -> Any:
    """Build the dataclass ``cls`` from a (nested) dict, rejecting unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    return _from_dict(cls, data)


def to_dict(cfg: Any) -> dict:
    """The inverse of ``from_dict``: plain dicts/lists/scalars, safe for YAML, JSON and Ray."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def _parse_scalar(text: str) -> Any:
    """Parse an override's right-hand side with YAML rules (``0.05`` -> float, ``true`` -> bool)."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    """Apply ``--a.b=value`` (or ``a.b=value``) overrides to a nested dict, returning a copy.

    If ``cls`` is given, each dotted path is checked against the dataclass tree first, so an
    override of a key that does not exist is an error naming that key.
    """
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for raw in overrides:
        item = raw[2:] if raw.startswith("--") else raw
        if "=" not in item:
            raise ConfigError(f"override {raw!r} must look like --section.key=value")
        path, text = item.split("=", 1)
        parts = path.split(".")
        if cls is not None:
            _check_path(cls, parts, raw)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {raw!r}: '{p}' is not a section")
        value = _parse_scalar(text)
        if cls is not None and _leaf_type(cls, parts) is str and not isinstance(value, str):
            value = text  # e.g. --run.name=123 stays the string "123"
        node[parts[-1]] = value
    return out


def _leaf_type(cls: type, parts: list[str]) -> Any:
    tp: Any = cls
    for p in parts:
        tp = _hints(tp)[p]
        if typing.get_origin(tp) in (Union, types.UnionType):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = arms[0] if len(arms) == 1 else tp
    return tp


def _check_path(cls: type, parts: list[str], raw: str) -> None:
    tp: Any = cls
    for i, p in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {raw!r}: '{'.'.join(parts[:i])}' is not a section")
        hints = _hints(tp)
        if p not in hints:
            _renamed(".".join(parts[: i + 1]))
            sect = ".".join(parts[:i]) or tp.__name__
            raise ConfigError(
                f"override {raw!r}: unknown key '{'.'.join(parts[: i + 1])}' "
                f"(known in {sect}: {', '.join(sorted(hints))})"
            )
        tp = hints[p]


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Any:
    """YAML file (optional) + dotted overrides -> a validated, frozen ``cls`` instance."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    data = apply_overrides(data, list(overrides), cls)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise blame(e, path, overrides) from None


def blame(err: ConfigError, path: Any, overrides: Any) -> ConfigError:
    """The error prefixed with the flag that set the offending key, else with the YAML file.

    ``--optim.lr=abc`` gives "--optim.lr=abc: optim.lr: expected a number, got 'abc'" (the value
    came from the command line, not from the file).
    """
    msg = str(err)
    flags = []
    for raw in overrides:
        item = raw[2:] if raw.startswith("--") else raw
        key = item.split("=", 1)[0]
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", msg):
            flags.append((len(key), raw if raw.startswith("--") else f"--{raw}"))
    if flags:
        return ConfigError(f"{max(flags)[1]}: {msg}")
    return ConfigError(f"{path}: {msg}" if path else msg)


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that also accepts dotted keys: replace(cfg, **{"rcs.fraction": .1})."""
    data = to_dict(cfg)
    return from_dict(type(cfg), apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in changes.items()], type(cfg)))


def config_hash(cfg: Any, length: int = 10) -> str:
    """Stable short hash of a config (for deterministic run names)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# Sections shared by the jobs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    manifest: str = ""  # local path or s3:// URI of a manifest.json written by jobs.prepare_data
    val_fraction: float = 0.01  # held out by index for RCS validation (authors: 1% small, 0.5% IN-32)
    holdout: bool = True  # False reproduces the authors' Q16 (train on the validation images too)
    image_size: int = 32
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:5555 for a local S3 server; "" = AWS default
    shuffle_seed: int = 0
    deterministic: bool = False  # Ray Data preserve_order: bit-exact reruns (tests), some throughput cost

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check_uri("data.manifest", self.manifest)


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["resnet18", "wrn"] = "resnet18"
    width: int = 64  # ResNet base width (64 = the authors'); tiny runs use 8 or 16
    depth: int = 28  # WRN depth
    widen: int = 10  # WRN widen factor
    head: Literal["proj3", "proj2"] = "proj3"  # 3-layer 512 head (CIFAR) / 2-layer 640 (IN-32)
    head_dim: int = 0  # 0 = the encoder's feature dim (512 / 640), as the authors
    bn_names: tuple[str, ...] = ("normal", "pgd")  # order of the dual BN branches
    normalize: bool = True  # ImageNet mean/std inside the model (ResNet); WRN has none
    channels_last: bool = True  # NHWC memory format: faster on GPUs and, measured, on CPUs (oneDNN)

    def __post_init__(self) -> None:
        if self.width < 1 or self.widen < 1:
            raise ConfigError("model.width and model.widen must be >= 1")
        if self.arch == "wrn" and (self.depth - 4) % 6 != 0:
            raise ConfigError(f"model.depth for wrn must be 6n+4 (e.g. 28), got {self.depth}")


@dataclass(frozen=True)
class AttackConfig:
    eps: float = 8 / 255  # L-inf radius on [0,1] pixels
    alpha: float = 2 / 255  # step size
    steps: int = 5  # ACL pre-training uses 5 PGD steps; evaluation uses 20

    def __post_init__(self) -> None:
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ConfigError("attack.eps, attack.alpha and attack.steps must be >= 0")


@dataclass(frozen=True)
class LossConfig:
    mode: str = "air"  # a pre-training method of pipeline.methods.METHODS: simclr, acl, dynacl, air
    temperature: float = 0.5  # 0.5 CIFAR/STL, 0.1 ImageNet-32
    lambda1: float = 0.5  # SIR weight (AIR)
    lambda2: float = 0.5  # AIR weight
    kl_form: Literal["released", "exact"] = "released"  # AIR KL as released, or a true KL (spec 4.1)
    # DynAug (staircase strength s(e) and weight omega(e)): None = the method's default (on for
    # dynacl and air); false with mode air = ACL-AIR, true with mode acl = DynACL
    dynaug: Optional[bool] = None
    dynaug_period: int = 50  # K: staircase length in epochs
    dynaug_lambda: float = 2 / 3  # omega = lambda * (1 - s)
    half: bool = False  # RCS repo's ACL divides (L_nat + L_adv) by 2
    # several workers: projections all-gathered (with gradients) so NT-Xent, ACL and the AIR/SIR
    # batch-softmaxes range over the global batch, as the authors' DataParallel; false = per worker
    gather: bool = True
    # Augmentation strength s scale: CL/ACL use s = aug_strength, DynACL/AIR aug_strength * s(e).
    # 1.0 = the authors (crops down to 10 % of the area); short 32 px runs learn faster with less.
    aug_strength: float = 1.0

    def __post_init__(self) -> None:
        from pipeline.methods import METHODS  # the registry (torch only; no Ray)

        if self.mode not in METHODS:
            raise ConfigError(f"loss.mode: {self.mode!r} is not a pre-training method; one of {list(METHODS)} "
                              "(pipeline/methods/)")
        if not 0.0 <= self.aug_strength <= 1.0:
            raise ConfigError(f"loss.aug_strength must be in [0, 1], got {self.aug_strength}")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["lars", "sgd", "adam"] = "lars"
    lr: float = 5.0  # LARS base lr (CIFAR 5.0, IN-32 0.6) for the global batch of the recipe
    momentum: float = 0.9
    weight_decay: float = 1e-6
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr: float = 1e-6
    schedule: Literal["cosine", "constant"] = "cosine"
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # scale lr by global batch / batch_ref
    batch_ref: int = 512

    def __post_init__(self) -> None:
        if not self.lr > 0:  # also rejects nan
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.final_lr < 0 or self.weight_decay < 0 or self.momentum < 0:
            raise ConfigError("optim.final_lr, optim.weight_decay and optim.momentum must be >= 0")
        if self.batch_ref < 1:
            raise ConfigError(f"optim.batch_ref must be >= 1, got {self.batch_ref}")


def check_resources(key: str, value: dict[str, float]) -> None:
    """Custom Ray resources (``{trainer: 1}``): named, positive, and not CPU / GPU (those have
    their own keys, so one request is never set in two places)."""
    for name, amount in value.items():
        if not name or name.strip() != name:
            raise ConfigError(f"{key}: resource names must be non-empty without spaces, got {name!r}")
        if name in ("CPU", "GPU"):
            raise ConfigError(f"{key}: {name!r} is set by its own key (CPUs: the cpus_per_* key, GPUs: use_gpu); "
                              f"{key} is for custom resources such as {{trainer: 1}}")
        if not 0 < amount < float("inf"):
            raise ConfigError(f"{key}.{name} must be a positive number, got {amount}")


@dataclass(frozen=True)
class RCSConfig:
    enabled: bool = False
    # pipeline.coreset.methods: greedy (RCS over minibatches), greedy_sample (over single samples),
    # random (k-subset, same schedule)
    method: str = "greedy"
    fraction: float = 0.2  # k: coreset size / training-set size
    warmup_epochs: int = 100  # full-data epochs before the first selection
    interval: int = 20  # select every I epochs after warm-up
    batch_size: int = 512  # minibatch size of the candidates (authors: 512)
    chunk_batches: int = 100  # greedy per chunk of this many minibatches (IN-32); 0 = one chunk
    lr: float = 0.01  # eta': theta' step after each pick
    compat_double_step: bool = False  # authors move theta' by 2*eta' (spec Q19)
    sample_group: int = 0  # greedy_sample: samples picked per theta' step / q_U refresh; 0 = batch_size
    # gains compare head gradients by: rows = mean over output rows (as released), full = the whole
    # gradient; auto = rows for ACL, full for SAT (the rows sketch of a CE classifier is 0)
    sketch: Literal["auto", "rows", "full"] = "auto"
    rd_loss: Literal["minmax_kl", "softmax_kl"] = "minmax_kl"  # small-scale / ImageNet RD form
    pgd_steps: int = 3  # RD-PGD steps on the validation set (small 3, IN-32 1)
    train_pgd_steps: int = 5  # PGD steps for the candidates' contrastive gradients (IN-32: 1)
    num_tasks: int = 0  # parallel Ray scoring tasks; 0 = one per chunk
    use_gpu: Optional[bool] = None  # scoring tasks request a GPU each; None = scaling.use_gpu
    cpus_per_task: int = 1  # CPUs (= torch threads) each scoring task asks for
    # custom Ray resources each scoring task asks for, e.g. {selector: 1} runs the tasks only on
    # nodes started with --resources='{"selector": N}' (at most N at a time per node)
    task_resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from pipeline.coreset.methods import SELECTION_METHODS

        if self.method not in SELECTION_METHODS:
            raise ConfigError(f"rcs.method: {self.method!r} is not a coreset selection method; one of "
                              f"{list(SELECTION_METHODS)} (pipeline/coreset/methods.py)")
        check_resources("rcs.task_resources", self.task_resources)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"rcs.fraction must be in (0, 1], got {self.fraction}")
        if self.interval < 1:
            raise ConfigError(f"rcs.interval must be >= 1, got {self.interval}")
        if self.cpus_per_task < 1:
            raise ConfigError(f"rcs.cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if self.sample_group < 0:
            raise ConfigError(f"rcs.sample_group must be >= 0 (0 = rcs.batch_size), got {self.sample_group}")


def resolve_rcs_gpu(cfg: Any) -> None:
    """Set ``cfg.rcs.use_gpu`` (frozen) to ``cfg.scaling.use_gpu`` when it was left at None."""
    if cfg.rcs.use_gpu is None:
        object.__setattr__(cfg, "rcs", dataclasses.replace(cfg.rcs, use_gpu=cfg.scaling.use_gpu))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000
    # The batch the loss sees, across all workers (the authors' DataParallel batch); each of W
    # workers takes global_batch_size / W (see per_worker_batch). With loss.gather the contrastive
    # objective is that of one batch of this size, whatever W is.
    global_batch_size: int = 512
    seed: int = 1
    checkpoint_every: int = 1  # epochs
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False
    sync_bn: bool = False  # authors: per-GPU BN (DataParallel); SyncBN is a switch
    log_every: int = 50  # steps between progress lines inside an epoch (0 = epoch lines only)
    max_steps_per_epoch: int = 0  # 0 = full epochs; >0 truncates (smoke tests)
    fail_at: str = ""  # test hook "epoch:step:rank[:nan]": SIGKILL that worker once (or inject a NaN loss)
    audit_shards: bool = False  # record per-epoch overlap/union of the indices the ranks saw

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError(f"train.checkpoint_every must be >= 1 (epochs), got {self.checkpoint_every}")
        if self.log_every < 0 or self.max_steps_per_epoch < 0:
            raise ConfigError("train.log_every and train.max_steps_per_epoch must be >= 0")
        if self.global_batch_size < 1:
            raise ConfigError(f"train.global_batch_size must be >= 1, got {self.global_batch_size}")

    def per_worker_batch(self, world: int) -> int:
        """The per-worker batch for ``world`` workers (checked: equal shares, no remainder)."""
        return per_worker_batch(self.global_batch_size, world)


def per_worker_batch(global_batch: int, world: int) -> int:
    """``global_batch / world``; a ConfigError names the field when it does not divide."""
    world = max(1, int(world))
    if global_batch % world:
        raise ConfigError(
            f"train.global_batch_size ({global_batch}) must be divisible by the number of workers ({world}): "
            f"every worker takes an equal share (e.g. --train.global_batch_size={global_batch // world * world or world})")
    return global_batch // world


def batch_and_lr_line(cfg: Any) -> str:
    """One line stating the global batch, the per-worker batch and the effective peak lr."""
    from pipeline.train.optim import scaled_lr  # lazy: config stays import-light

    world = max(1, cfg.scaling.num_workers)
    g = cfg.train.global_batch_size
    o = cfg.optim
    lr = scaled_lr(o, g)
    how = "" if o.lr_scaling == "none" else f" = {o.lr:g} x {o.lr_scaling}({g}/{o.batch_ref})"
    return (f"batch: global {g} = {world} worker(s) x {per_worker_batch(g, world)}; "
            f"peak lr {lr:g}{how} (optim.lr_scaling={o.lr_scaling})")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1  # 0 = Ray Train local mode (in-process)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # -1 = retry forever (Ray Train's FailureConfig)
    # custom Ray resources each worker asks for besides its CPUs / GPU, e.g. {trainer: 1} puts the
    # workers only on nodes started with --resources='{"trainer": N}', at most N per node
    resources_per_worker: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_resources("scaling.resources_per_worker", self.resources_per_worker)
        if self.num_workers < 0:
            raise ConfigError(f"scaling.num_workers must be >= 0 (0 = local mode), got {self.num_workers}")
        if self.max_failures < -1:
            raise ConfigError(f"scaling.max_failures must be >= -1 (-1 = unlimited), got {self.max_failures}")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")

    def worker_resources(self) -> dict[str, float]:
        """What one Ray Train worker (or one fine-tuning mode task) asks Ray for."""
        return {"CPU": self.cpus_per_worker, **({"GPU": 1.0} if self.use_gpu else {}), **self.resources_per_worker}


@dataclass(frozen=True)
class RunConfig:
    name: str = ""  # "" = derived from the config hash (deterministic)
    storage_path: str = "runs"  # local folder or s3://bucket/prefix
    ray_address: str = ""  # "" = auto (RAY_ADDRESS, else a new local Ray)

    def __post_init__(self) -> None:
        check_uri("run.storage_path", self.storage_path, allow_empty=False)


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rcs: RCSConfig = field(default_factory=RCSConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        resolve_rcs_gpu(self)  # RCS tasks use the GPU when the trainer does, unless told
        if not 0 <= self.optim.warmup_epochs < self.train.epochs:
            raise ConfigError(
                f"optim.warmup_epochs ({self.optim.warmup_epochs}) must be < train.epochs ({self.train.epochs})"
            )
        if self.rcs.enabled and self.rcs.warmup_epochs >= self.train.epochs:
            raise ConfigError(
                f"rcs.warmup_epochs ({self.rcs.warmup_epochs}) must be < train.epochs ({self.train.epochs}) "
                f"for RCS to select anything"
            )
        if self.train.epochs < 1:
            raise ConfigError("train.epochs must be >= 1")
        self.train.per_worker_batch(self.scaling.num_workers)  # divisible by the workers

    def run_name(self) -> str:
        return self.run.name or f"pretrain-{self.loss.mode}-{config_hash(self)}"
