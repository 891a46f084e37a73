"""One model builder: every method replayed on a backbone from a run's config.

``build_methods(cfg)`` instantiates every method group (no group is special) and checks that the
chosen options can run together; ``prepare_model(model, methods)`` runs their ``prepare`` in
``METHOD_ORDER`` through one ``ModelEditor``; ``build_model(cfg)`` does both on a fresh backbone.
The training pipeline, ``lowbit.export`` / ``load_packed``, ``lowbit.hessian`` and the benchmarks
all build models here, so a combined run (pruning + ternary weights + distillation) exports and
reloads with the same layers, transforms and buffers it trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowbit.edit import ModelEditor
from lowbit.errors import LowbitConfigError, check
from lowbit.methods import METHOD_ORDER, Method, check_compatible


def build(cfg_node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces lowbit's own one-line errors unwrapped."""
    try:
        return instantiate(cfg_node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, LowbitConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        target = getattr(cfg_node, "_target_", None) or "config"
        detail = e.__cause__ if e.__cause__ is not None else e
        lines = str(detail).strip().splitlines()
        raise LowbitConfigError(f"{target}: {type(detail).__name__}: {lines[0] if lines else ''}") from None


#: the only ``_target_`` a model config read from a file may name
MODEL_TARGET = "lowbit.models.ModelSpec"


def _targets(node: Any, path: str = ""):
    if isinstance(node, Mapping) or OmegaConf.is_dict(node):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, where)
    elif isinstance(node, (list, tuple)) or OmegaConf.is_list(node):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def check_trusted_config(cfg: Mapping, source: str, groups: tuple[str, ...] = METHOD_ORDER,
                         model: bool = False) -> None:
    """Refuse a config read from a file (an export's ``lowbit.json``, a run's ``.hydra/config.yaml``) unless
    every ``_target_`` in it is one of lowbit's own: a ``Method`` subclass at the top of a method group, and
    (``model``) ``lowbit.models.ModelSpec``. Checked as strings before anything is imported or built, so a
    crafted file cannot name ``shutil.copy`` or ``os.system``."""
    from hydra.utils import get_class

    wanted = {g: cfg.get(g) for g in groups}
    if model:
        wanted["model"] = cfg.get("model")
    for group, node in wanted.items():
        if node is None:
            continue
        for path, target in _targets(node, group):
            target = str(target)
            if path == "model" and model:
                check(target == MODEL_TARGET, f"{source}: model._target_={target!r} is not {MODEL_TARGET!r}; refused")
                continue
            check(path == group and target.startswith("lowbit.") and target.replace(".", "").replace("_", "").isalnum(),
                  f"{source}: {path}._target_={target!r} is not one of lowbit's methods; refused")
            try:
                cls = get_class(target)
            except Exception:  # noqa: BLE001 - any import failure means: not a lowbit method class
                cls = None
            check(isinstance(cls, type) and issubclass(cls, Method),
                  f"{source}: {path}._target_={target!r} is not one of lowbit's methods; refused")


def method_choices() -> dict[str, str]:
    """The option chosen in each config group (``quantizer`` -> ``ternary_twn``), when Hydra composed the config."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    try:
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except (AttributeError, ValueError):
        return {}


def build_methods(cfg: DictConfig | Mapping, choices: Mapping[str, str] | None = None) -> dict[str, Method]:
    """Every method group of ``cfg`` instantiated, in ``METHOD_ORDER``, checked to combine."""
    choices = method_choices() if choices is None else choices
    methods = {group: build_method(cfg, group, choices) for group in METHOD_ORDER}
    check_compatible(methods)
    return methods


def build_method(cfg: DictConfig | Mapping, group: str, choices: Mapping[str, str]) -> Method:
    """One method group of ``cfg`` instantiated, labelled with its group and chosen option."""
    node = cfg.get(group)
    check(node is not None, f"the config has no {group!r} group")
    method = build(node)
    check(isinstance(method, Method), f"{group}: _target_ must build a lowbit.methods.Method, got {type(method).__name__}")
    method.group = group
    method.option = choices.get(group) or type(method).__name__
    return method


def prepare_model(model: nn.Module, methods: Mapping[str, Method], purpose: str = "train") -> ModelEditor:
    """Run every method's ``prepare`` on ``model`` (in place), in ``METHOD_ORDER``."""
    edit = ModelEditor(model, purpose)
    for group in METHOD_ORDER:
        if group in methods:
            edit.group = group
            methods[group].prepare(model, edit)
    return edit


@dataclass
class BuiltModel:
    model: nn.Module
    methods: dict[str, Method]
    edit: ModelEditor
    spec: Any = None  # the ModelSpec


def build_model(cfg: DictConfig, num_labels: int | None = None, purpose: str = "train", weights: str = "pretrained",
                backbone: nn.Module | None = None, methods: Mapping[str, Method] | None = None,
                with_methods: bool = True) -> BuiltModel:
    """A backbone (``cfg.model``, or ``backbone``) with every method of ``cfg`` prepared on it.

    ``weights``: ``pretrained`` (the model's own weights and ``model.init_checkpoint``) or
    ``none`` (the architecture only, for loading a checkpoint or a packed export over it).
    ``with_methods=False`` returns the float backbone (the Hessian of a fine-tuned fp32 model).
    """
    from lowbit.data.tasks import GLUE_TASKS

    spec = build(cfg.model)
    if num_labels is None:
        num_labels = GLUE_TASKS.get(cfg.data.task).num_labels
    model = backbone if backbone is not None else spec.build(num_labels, weights=weights)
    if not with_methods:
        return BuiltModel(model, {}, ModelEditor(model, purpose), spec)
    methods = dict(methods) if methods is not None else build_methods(cfg)
    edit = prepare_model(model, methods, purpose)
    return BuiltModel(model, methods, edit, spec)
