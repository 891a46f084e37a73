"""Where things are in a HF BERT-family model: every module a method can act on, by role.

Methods ask for roles, never for module types or name patterns of their own. Roles are
dotted; asking for a prefix (``attention``, ``ffn``, ``layer_norm``) returns every role under it.

| role | BERT / RoBERTa | ALBERT |
|---|---|---|
| ``word_embedding``, ``position_embedding``, ``token_type_embedding`` | ``embeddings.*_embeddings`` | same |
| ``embedding_projection`` | – | ``encoder.embedding_hidden_mapping_in`` |
| ``attention.{query,key,value,output}`` | ``attention.self.{query,key,value}``, ``attention.output.dense`` | ``attention.{query,key,value,dense}`` |
| ``ffn.{intermediate,output}`` | ``intermediate.dense``, ``output.dense`` | ``ffn``, ``ffn_output`` |
| ``act_fn`` | ``intermediate.intermediate_act_fn`` | ``activation`` |
| ``layer_norm.{embedding,attention,ffn}`` | ``embeddings.LayerNorm``, ``attention.output.LayerNorm``, ``output.LayerNorm`` | ``embeddings.LayerNorm``, ``attention.LayerNorm``, ``full_layer_layer_norm`` |
| ``self_attention`` | ``attention.self`` (carries the attention hooks; its ``softmax`` slot is the ``softmax`` role) | ``attention`` |
| ``pooler`` | ``pooler.dense`` | ``pooler`` |
| ``classifier`` | ``classifier`` (RoBERTa: ``classifier.dense``, ``classifier.out_proj``) | ``classifier`` |
| ``exit.<i>`` | modules a method adds (``ModelEditor.add_module``), e.g. off-ramps | same |
| ``exit_pooler``, ``exit_classifier`` | an added module's children it names in ``child_roles`` (an off-ramp's Linears; ``layer`` = the parent's index) | same |

Patterns are registered per ``config.model_type``; a new family is one ``FAMILIES.register`` call.
ALBERT shares layers across depth: its ``layer`` index numbers the shared layers (group · inner_group_num + index
in the group), not the depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lowbit.registry import Registry

ROLES = ("word_embedding", "position_embedding", "token_type_embedding", "embedding_projection",
         "attention.query", "attention.key", "attention.value", "attention.output",
         "ffn.intermediate", "ffn.output", "act_fn", "layer_norm.embedding", "layer_norm.attention", "layer_norm.ffn",
         "self_attention", "pooler", "classifier")
#: roles held by an nn.Linear / nn.Embedding (the ones a weight transform can act on)
WEIGHT_ROLES = ("word_embedding", "position_embedding", "token_type_embedding", "embedding_projection",
                "attention.query", "attention.key", "attention.value", "attention.output",
                "ffn.intermediate", "ffn.output", "pooler", "classifier", "exit_pooler", "exit_classifier")
#: roles of task heads: never quantized or pruned (the final classifier and every off-ramp's)
CLASSIFIER_ROLES = ("classifier", "exit_classifier")
EMBEDDING_ROLES = ("word_embedding", "position_embedding", "token_type_embedding")
#: the encoder's own Linear weights (what "encoder Linear" means for pruning and layer-wise bits)
ENCODER_LINEAR_ROLES = ("attention", "ffn")
EXTRA_MODULES_ATTR = "lowbit_modules"


@dataclass(frozen=True)
class FamilyPatterns:
    #: (regex on the module's qualified name, role); the first match wins; group "layer" = layer index
    modules: tuple[tuple[str, str], ...]


FAMILIES: Registry[FamilyPatterns] = Registry("model family (config.model_type)")

_L = r"(?P<layer>\d+)"
_BERT = FamilyPatterns((
    (r"embeddings\.word_embeddings$", "word_embedding"),
    (r"embeddings\.position_embeddings$", "position_embedding"),
    (r"embeddings\.token_type_embeddings$", "token_type_embedding"),
    (r"embeddings\.LayerNorm$", "layer_norm.embedding"),
    (rf"encoder\.layer\.{_L}\.attention\.self\.query$", "attention.query"),
    (rf"encoder\.layer\.{_L}\.attention\.self\.key$", "attention.key"),
    (rf"encoder\.layer\.{_L}\.attention\.self\.value$", "attention.value"),
    (rf"encoder\.layer\.{_L}\.attention\.self$", "self_attention"),
    (rf"encoder\.layer\.{_L}\.attention\.output\.dense$", "attention.output"),
    (rf"encoder\.layer\.{_L}\.attention\.output\.LayerNorm$", "layer_norm.attention"),
    (rf"encoder\.layer\.{_L}\.intermediate\.dense$", "ffn.intermediate"),
    (rf"encoder\.layer\.{_L}\.intermediate\.intermediate_act_fn$", "act_fn"),
    (rf"encoder\.layer\.{_L}\.output\.dense$", "ffn.output"),
    (rf"encoder\.layer\.{_L}\.output\.LayerNorm$", "layer_norm.ffn"),
    (r"pooler\.dense$", "pooler"),
    (r"^classifier(\.(dense|out_proj))?$", "classifier"),
))
FAMILIES.register("bert", _BERT)
FAMILIES.register("roberta", _BERT)
# ALBERT: albert_layer_groups.<g>.albert_layers.<i>: layer = g · inner_group_num + i (one shared group in albert-base)
_A = rf"albert_layer_groups\.(?P<group>\d+)\.albert_layers\.{_L}"
FAMILIES.register("albert", FamilyPatterns((
    (r"embeddings\.word_embeddings$", "word_embedding"),
    (r"embeddings\.position_embeddings$", "position_embedding"),
    (r"embeddings\.token_type_embeddings$", "token_type_embedding"),
    (r"embeddings\.LayerNorm$", "layer_norm.embedding"),
    (r"encoder\.embedding_hidden_mapping_in$", "embedding_projection"),
    (rf"{_A}\.attention\.query$", "attention.query"),
    (rf"{_A}\.attention\.key$", "attention.key"),
    (rf"{_A}\.attention\.value$", "attention.value"),
    (rf"{_A}\.attention\.dense$", "attention.output"),
    (rf"{_A}\.attention\.LayerNorm$", "layer_norm.attention"),
    (rf"{_A}\.attention$", "self_attention"),
    (rf"{_A}\.ffn$", "ffn.intermediate"),
    (rf"{_A}\.ffn_output$", "ffn.output"),
    (rf"{_A}\.activation$", "act_fn"),
    (rf"{_A}\.full_layer_layer_norm$", "layer_norm.ffn"),
    (r"pooler$", "pooler"),
    (r"^classifier$", "classifier"),
)))


@dataclass(frozen=True)
class Target:
    name: str
    role: str
    layer: int | None
    module: nn.Module

    @property
    def group(self) -> str:
        """The role's first part: ``attention`` for ``attention.query``."""
        return self.role.split(".", 1)[0]


def family(model: nn.Module) -> FamilyPatterns:
    return FAMILIES.get(getattr(model.config, "model_type", type(model).__name__))


def matches(role: str, wanted: tuple[str, ...]) -> bool:
    return not wanted or any(role == w or role.startswith(w + ".") for w in wanted)


def _role_of(name: str, module: nn.Module, patterns: FamilyPatterns,
             inner_group_num: int = 1) -> tuple[str, int | None] | None:
    for regex, role in patterns.modules:
        m = re.search(regex, name)
        if m:
            if role in WEIGHT_ROLES and not isinstance(module, (nn.Linear, nn.Embedding)):
                return None
            layer, group = m.groupdict().get("layer"), m.groupdict().get("group")
            if layer is None:
                return role, None
            return role, int(layer) + (0 if group is None else int(group) * inner_group_num)
    return None


def find_targets(model: nn.Module, *roles: str) -> list[Target]:
    """Every module of the model with a role (optionally only ``roles``, prefixes allowed), in module order."""
    patterns = family(model)
    inner = int(getattr(model.config, "inner_group_num", 1) or 1)  # ALBERT: layers per shared group
    extras = getattr(model, EXTRA_MODULES_ATTR, None)
    extra_roles: dict[str, str] = getattr(extras, "roles", {}) if extras is not None else {}
    found = []
    for name, module in model.named_modules():
        if extras is not None and name.startswith(EXTRA_MODULES_ATTR + "."):
            hit = _extra_role(extras, extra_roles, name[len(EXTRA_MODULES_ATTR) + 1:])
            if hit is not None and matches(hit[0], roles):
                found.append(Target(name, hit[0], hit[1], module))
            continue
        hit = _role_of(name, module, patterns, inner)
        if hit is not None and matches(hit[0], roles):
            found.append(Target(name, hit[0], hit[1], module))
    return found


def _extra_role(extras: nn.Module, extra_roles: dict[str, str], key: str) -> tuple[str, int | None] | None:
    """Role and index of an added module (``exit_3`` with role ``exit.3``) or of a child it names in its
    ``child_roles`` (``exit_3.pooler`` -> ``exit_pooler``, index 3)."""
    parent_key, _, child = key.partition(".")
    role = extra_roles.get(parent_key)
    if role is None:
        return None
    index = role.rsplit(".", 1)[-1]
    layer = int(index) if index.isdigit() else None
    if not child:
        return role, layer
    child_role = getattr(extras[parent_key], "child_roles", {}).get(child)
    return None if child_role is None else (child_role, layer)


def num_layers(model: nn.Module) -> int:
    """Encoder layers with their own weights (ALBERT: the shared layers)."""
    layers = {t.layer for t in find_targets(model, *ENCODER_LINEAR_ROLES)}
    return len(layers)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
