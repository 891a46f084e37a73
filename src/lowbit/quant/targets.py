"""Where things are in a HF BERT-family model: the role of each Linear/Embedding.

Roles are what the config groups speak in (Q-BERT Table 3's knobs):
``word_embedding``, ``position_embedding``, ``token_type_embedding``,
``embedding_projection`` (ALBERT), ``attention`` (Q/K/V/output), ``ffn``,
``pooler`` and ``classifier``. Patterns are registered per ``config.model_type``;
a new family is one ``TARGET_PATTERNS.register`` call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lowbit.registry import Registry

ROLES = ("word_embedding", "position_embedding", "token_type_embedding", "embedding_projection",
         "attention", "ffn", "pooler", "classifier")


@dataclass(frozen=True)
class FamilyPatterns:
    #: (regex on the module's qualified name, role); the first match wins; group 1 = layer index
    modules: tuple[tuple[str, str], ...]
    #: regex matching self-attention modules (those that call the attention interface)
    self_attention: str


TARGET_PATTERNS: Registry[FamilyPatterns] = Registry("model family (config.model_type)")

_BERT = FamilyPatterns(
    modules=(
        (r"embeddings\.word_embeddings$", "word_embedding"),
        (r"embeddings\.position_embeddings$", "position_embedding"),
        (r"embeddings\.token_type_embeddings$", "token_type_embedding"),
        (r"encoder\.layer\.(\d+)\.attention\.(self\.(query|key|value)|output\.dense)$", "attention"),
        (r"encoder\.layer\.(\d+)\.(intermediate|output)\.dense$", "ffn"),
        (r"pooler\.dense$", "pooler"),
        (r"^classifier(\.|$)", "classifier"),
    ),
    self_attention=r"encoder\.layer\.\d+\.attention\.self$",
)
TARGET_PATTERNS.register("bert", _BERT)
TARGET_PATTERNS.register("roberta", _BERT)
TARGET_PATTERNS.register("albert", FamilyPatterns(
    modules=(
        (r"embeddings\.word_embeddings$", "word_embedding"),
        (r"embeddings\.position_embeddings$", "position_embedding"),
        (r"embeddings\.token_type_embeddings$", "token_type_embedding"),
        (r"encoder\.embedding_hidden_mapping_in$", "embedding_projection"),
        (r"albert_layers\.(\d+)\.attention\.(query|key|value|dense)$", "attention"),
        (r"albert_layers\.(\d+)\.(ffn|ffn_output)$", "ffn"),
        (r"pooler$", "pooler"),
        (r"^classifier(\.|$)", "classifier"),
    ),
    self_attention=r"albert_layers\.\d+\.attention$",
))


@dataclass(frozen=True)
class Target:
    name: str
    role: str
    layer: int | None
    module: nn.Module


def family(model: nn.Module) -> FamilyPatterns:
    return TARGET_PATTERNS.get(getattr(model.config, "model_type", type(model).__name__))


def find_targets(model: nn.Module) -> list[Target]:
    """Every Linear/Embedding of the model with its role (classifier included)."""
    patterns = family(model).modules
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        for regex, role in patterns:
            m = re.search(regex, name)
            if m:
                layer = int(m.group(1)) if m.groups() and m.group(1) and m.group(1).isdigit() else None
                found.append(Target(name, role, layer, module))
                break
    return found


def find_self_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    regex = family(model).self_attention
    return [(n, m) for n, m in model.named_modules() if re.search(regex, n)]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
