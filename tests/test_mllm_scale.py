"""Paper-scale readiness of the MLLM branch on tiny local stand-ins: a LLaVA-1.5 folder
(tiny random-weight Llava written here), bf16 LLM with fp32 master weights, gradient
checkpointing, FSDP2 sharding of the LLM over 2 gloo processes, DriveLM JSON as a
training source."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dima_planner.model.mllm import MLLMBranch, MLLMConfig
from dima_planner.model.mllm.batch import MLLMTargets, QABatch
from dima_planner.model.mllm.config import LLMConfig, LoRAConfig, QFormerConfig, SurrogateConfig
from dima_planner.model.mllm.llm import is_llava_dir, load_llm


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small real tokenizer folder (GPT-2 byte-level BPE trained on a few sentences)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["There are 2 vehicles ahead within 30 m.", "The ego vehicle is keeping its speed.",
            "What is the ego vehicle doing?", "You are a driving assistant; the scene comes before this text.",
            "Question: Answer:"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(out)
    return out


def _llama_cfg(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


@pytest.fixture(scope="module")
def llava_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random-weight LLaVA-1.5 folder in the llava-hf format."""
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=32, patch_size=16),
                      text_config=_llama_cfg(len(tok)), image_token_index=len(tok) - 1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    out = tmp_path_factory.mktemp("llava")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(_llama_cfg(len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def small_cfg(path: Path, **llm) -> MLLMConfig:
    return MLLMConfig(token_dim=16, planner_dim=16, bev_hw=(4, 4),
                      llm=LLMConfig(path=str(path), use_chat_template=False, max_answer_tokens=16, **llm),
                      lora=LoRAConfig(rank=4, alpha=8.0),
                      qformer=QFormerConfig(dim=16, num_layers=1, num_heads=2, ffn_mult=2,
                                            num_queries={"bev": 2, "ego": 1, "agent": 2, "map": 2}),
                      surrogate=SurrogateConfig(head_hidden=16, max_supervised_cells=4))


def beam(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"bev": torch.randn(b, 16, 16, generator=g), "ego": torch.randn(b, 1, 16, generator=g),
            "agent": torch.randn(b, 3, 16, generator=g), "map": torch.randn(b, 3, 16, generator=g)}


def targets(b: int = 2) -> MLLMTargets:
    return MLLMTargets(ego_fut_traj=torch.randn(b, 6, 2), ego_fut_mask=torch.ones(b, 6),
                       command=torch.tensor([2, 0][:b]))


QA = QABatch(["What is the ego vehicle doing?", "What is the ego vehicle doing?"],
             ["The ego vehicle is keeping its speed.", "There are 2 vehicles ahead within 30 m."], [0, 1])


def test_llava_folder_loads_its_language_model(llava_dir):
    from transformers import LlavaForConditionalGeneration

    assert is_llava_dir(llava_dir)
    model, tok = load_llm(LLMConfig(path=str(llava_dir)))
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.get_decoder().layers) == 3
    assert not any("vision" in n for n, _ in model.named_parameters())
    # the extracted LM computes exactly what the LLaVA's own language model computes
    ref = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    ids = torch.tensor([tok("There are 2 vehicles").input_ids])
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    branch = MLLMBranch(small_cfg(llava_dir)).train()
    out = branch(beam(), QA, targets())
    out["total"].backward()
    assert torch.isfinite(out["qa"]) and all(p.grad is not None for p in branch.qformers.parameters())
    assert isinstance(branch.generate({k: v[:1] for k, v in beam().items()}, "What is the ego vehicle doing?", 4), str)


def test_bf16_llm_keeps_fp32_master_weights_and_checkpointing_matches(llama_dir):
    branch = MLLMBranch(small_cfg(llama_dir, dtype="bfloat16")).train()
    frozen = [p for p in branch.llm.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in branch.trainable_parameters())  # LoRA, Q-Formers, heads
    out = branch(beam(), QA, targets())
    out["total"].backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in branch.trainable_parameters())
    assert out["ego_feature"].dtype == torch.float32

    def grads(ckpt: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        b = MLLMBranch(small_cfg(llama_dir, gradient_checkpointing=ckpt))
        b.train()
        b.cfg.surrogate.mask_ratio = 0.0
        b.cfg.lora.dropout = 0.0
        for m in b.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        loss = b.answer_loss(beam(), QA)
        loss.backward()
        return [p.grad.clone() for p in b.trainable_parameters() if p.grad is not None]

    plain, ckpt = grads(False), grads(True)
    assert len(plain) == len(ckpt) and all(torch.allclose(a, c, atol=1e-6) for a, c in zip(plain, ckpt))


def _fsdp_worker(rank: int, world: int, llama_dir: str, out: str) -> None:
    import torch.distributed as dist
    from dist_harness import env_rendezvous

    env_rendezvous(rank, world, Path(out).parent, "fsdp")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.fsdp import FSDPModule

        from dima_planner.model.mllm.llm import shard_llm

        torch.manual_seed(0)
        branch = MLLMBranch(small_cfg(Path(llama_dir)))
        for m in branch.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        layers = branch.llm.get_base_model().get_decoder().layers
        full = sum(p.numel() for p in layers.parameters())
        shard_llm(branch.llm)
        assert isinstance(layers[0], FSDPModule)
        local = sum(p.to_local().numel() for p in layers.parameters())
        branch.train()
        loss = branch.answer_loss(beam(), QA)
        loss.backward()
        lora = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                for n, p in branch.llm.named_parameters() if p.grad is not None}
        if rank == 0:
            torch.save({"loss": float(loss), "full": full, "local": local,
                        "lora": {k: v.clone() for k, v in lora.items()}}, out)
    finally:
        dist.destroy_process_group()


def test_fsdp2_shards_the_llm_over_two_gloo_ranks_with_identical_gradients(llama_dir, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_fsdp_worker, args=(2, str(llama_dir), str(out)), nprocs=2, join=True)
    res = torch.load(out)
    assert res["local"] < 0.6 * res["full"]  # each rank holds about half of the decoder layers
    torch.manual_seed(0)
    branch = MLLMBranch(small_cfg(llama_dir))
    for m in branch.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    branch.train()
    loss = branch.answer_loss(beam(), QA)
    loss.backward()
    ref = {n: p.grad for n, p in branch.llm.named_parameters() if p.grad is not None}
    assert abs(res["loss"] - float(loss)) < 1e-5
    assert set(ref) == set(res["lora"]) and ref
    assert all(torch.allclose(ref[k], res["lora"][k], atol=1e-6) for k in ref)
