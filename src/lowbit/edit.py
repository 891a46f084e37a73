"""The surgery API a method's ``prepare(model, edit)`` uses.

``ModelEditor`` finds modules by role (``lowbit.roles``) and changes them in ways that compose:

- ``add_weight_transform`` / ``add_input_transform`` / ``add_output_transform`` /
  ``add_bias_transform``: wrap the Linear/Embedding once (idempotent) and add to its chain;
- ``add_attention_transform`` / ``set_softmax``: fill a slot of a self-attention's hooks;
- ``replace``: swap a role module (``act_fn``, ``layer_norm``) for another;
- ``add_module``: register a new module with a role (e.g. off-ramps ``exit.<i>``), so it is
  trained, checkpointed, moved to the device and found by role like any other;
- ``plan``: notes one method leaves for a later one (``bit_assignment`` writes ``plan["bits"]``,
  the quantizer reads it).

Every change is keyed by the group of the method that made it (``edit.group``, set by the
builder), so two methods never overwrite each other: a clash is a one-line error naming both.
``purpose`` says why the model is built: ``train``, ``deploy`` (export / reload: no teacher)
or ``analysis``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.attention import AttentionHooks, attention_hooks, enable_lowbit_attention
from lowbit.errors import LowbitConfigError, check
from lowbit.layers import LowbitEmbedding, LowbitLinear, wrap
from lowbit.roles import EXTRA_MODULES_ATTR, Target, find_targets, set_submodule

PURPOSES = ("train", "deploy", "analysis")


class ExtraModules(nn.ModuleDict):
    """Modules methods add to a model (``model.lowbit_modules``), each with a role."""

    def __init__(self):
        super().__init__()
        self.roles: dict[str, str] = {}


class ModelEditor:
    def __init__(self, model: nn.Module, purpose: str = "train"):
        check(purpose in PURPOSES, f"unknown build purpose {purpose!r}; known: {PURPOSES}")
        self.model, self.purpose = model, purpose
        self.group = "user"  # the method group now preparing; set by the builder
        self.plan: dict[str, Any] = {}
        #: (group, what, module name), in the order changes were made
        self.changes: list[tuple[str, str, str]] = []

    # -- finding -----------------------------------------------------------------------------
    def targets(self, *roles: str) -> list[Target]:
        return find_targets(self.model, *roles)

    def self_attention(self) -> list[tuple[Target, AttentionHooks]]:
        """Every self-attention module with its hooks (created on first use; lowbit attention enabled)."""
        found = [(t, attention_hooks(t.module)) for t in self.targets("self_attention")]
        if found:
            enable_lowbit_attention(self.model)
        return found

    # -- layers ------------------------------------------------------------------------------
    def layer(self, target: Target | str) -> LowbitLinear | LowbitEmbedding:
        """The lowbit wrapper of a Linear/Embedding target, wrapping it in place the first time."""
        name = target if isinstance(target, str) else target.name
        module = self.model.get_submodule(name)
        wrapped = wrap(module)
        if wrapped is not module:
            set_submodule(self.model, name, wrapped)
        return wrapped

    def _add(self, target: Target | str, slot: str, module: nn.Module, suffix: str = "") -> None:
        name = target if isinstance(target, str) else target.name
        layer = self.layer(name)
        key = self.group + (f"_{suffix}" if suffix else "")
        chain = getattr(layer, f"{slot}_transforms")
        if key in chain:
            raise LowbitConfigError(f"{name}: the {slot} slot already holds a transform of {key!r}")
        if slot == "weight":
            module.validate(layer.weight, name)
        layer.add_transform(slot, key, module)
        self.changes.append((self.group, f"{slot}_transform:{type(module).__name__}", name))

    def add_weight_transform(self, target: Target | str, transform: nn.Module, suffix: str = "") -> None:
        self._add(target, "weight", transform, suffix)

    def add_input_transform(self, target: Target | str, module: nn.Module, suffix: str = "") -> None:
        self._add(target, "input", module, suffix)

    def add_output_transform(self, target: Target | str, module: nn.Module, suffix: str = "") -> None:
        self._add(target, "output", module, suffix)

    def add_bias_transform(self, target: Target | str, module: nn.Module, suffix: str = "") -> None:
        self._add(target, "bias", module, suffix)

    # -- attention ---------------------------------------------------------------------------
    def add_attention_transform(self, target: Target, slot: str, module: nn.Module, suffix: str = "") -> None:
        hooks = attention_hooks(target.module)
        hooks.add(slot, self.group + (f"_{suffix}" if suffix else ""), module)
        enable_lowbit_attention(self.model)
        self.changes.append((self.group, f"attention.{slot}:{type(module).__name__}", target.name))

    def set_softmax(self, target: Target, module: nn.Module) -> None:
        hooks = attention_hooks(target.module)
        owner = getattr(hooks.softmax, "lowbit_owner", None)
        if owner is not None and owner != self.group:
            raise LowbitConfigError(f"{target.name}: the softmax was already replaced by {owner!r}")
        module.lowbit_owner = self.group
        hooks.softmax = module
        enable_lowbit_attention(self.model)
        self.changes.append((self.group, f"softmax:{type(module).__name__}", target.name))

    # -- whole modules -----------------------------------------------------------------------
    def replace(self, target: Target, module: nn.Module) -> None:
        """Replace a role module (``act_fn``, ``layer_norm``, ...) by ``module``."""
        current = self.model.get_submodule(target.name)
        owner = getattr(current, "lowbit_owner", None)
        if owner is not None and owner != self.group:
            raise LowbitConfigError(f"{target.name} ({target.role}) was already replaced by {owner!r}")
        module.lowbit_owner = self.group
        set_submodule(self.model, target.name, module)
        self.changes.append((self.group, f"replace:{type(module).__name__}", target.name))

    def add_module(self, name: str, module: nn.Module, role: str) -> Target:
        """Register a new module under ``model.lowbit_modules[name]`` with ``role`` (e.g. ``exit.3``)."""
        check("." not in name, f"module name {name!r} must not contain '.'")
        extras = getattr(self.model, EXTRA_MODULES_ATTR, None)
        if extras is None:
            extras = ExtraModules()
            self.model.add_module(EXTRA_MODULES_ATTR, extras)
        if name in extras:
            raise LowbitConfigError(f"{EXTRA_MODULES_ATTR}.{name} is already taken")
        module.lowbit_owner = self.group
        extras[name] = module
        extras.roles[name] = role
        self.changes.append((self.group, f"add_module:{type(module).__name__}", name))
        return Target(f"{EXTRA_MODULES_ATTR}.{name}", role, None, module)

    def changed_by(self, group: str) -> list[tuple[str, str]]:
        return [(what, name) for g, what, name in self.changes if g == group]
