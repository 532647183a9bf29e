"""MLLMBranch: BEAM tokens -> Q-Formers -> LoRA LLM -> QA, surrogate tasks, distillation.

LLM input layout of every row (right-padded):
    [BOS?] [Q-Former tokens of B | E | A | M] [EGO read-out] [prompt tokens] [answer tokens]
Next-token loss is taken on the answer tokens only.

The EGO read-out is one learned embedding placed right after the BEAM tokens. Its
hidden state at the LLM's penultimate layer is "the MLLM's penultimate-layer ego
feature": with causal attention it sees every BEAM token (the ego Q-Former tokens sit
before the agent and map tokens, so they alone could not) and no text, so it is the
same for every question about a sample and at inference needs no prompt at all.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batch import EditBatch, MLLMTargets, QABatch
from .config import TOKEN_TYPES, MLLMConfig
from .heads import AgentTokenMaker, BEVTokenDecoder, MLP3, TrajectoryHead
from .llm import apply_lora, load_llm
from .losses import distillation_loss, masked_trajectory_l1
from .qformer import BEAMQFormers

SYSTEM_PROMPT = "You are a driving assistant; the scene comes before this text."


def as_beam_dict(beam: Any) -> dict[str, torch.Tensor]:
    """Accept {"bev", "ego", "agent", "map"} dicts or any object with those attributes
    (model.planner.BeamTokens), so the trainer can pass the scene encoder's output as is."""
    if isinstance(beam, Mapping):
        return dict(beam)
    if all(hasattr(beam, t) for t in TOKEN_TYPES):
        return {t: getattr(beam, t) for t in TOKEN_TYPES}
    raise TypeError(f"BEAM tokens must be a mapping or have attributes {TOKEN_TYPES}, got {type(beam).__name__}")


def standardise(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each BEV token standardised over its channels (MAE's normalised-pixel target).

    Why: raw BEV features are small (their MSE is about 1e-3), so reconstruction and
    future prediction put almost no gradient on the encoder whatever their weight; on
    standardised targets the losses start near 1 and their weights mean what they say.
    """
    return (t - t.mean(-1, keepdim=True)) / (t.std(-1, keepdim=True) + eps)


class MLLMBranch(nn.Module):
    """The MLLM branch of DiMA. Build once (loads the LLM), then call from the trainer.

    forward(beam, qa, targets) -> {"qa", "plan", "bev_recon", "bev_future", "edit_qa",
    "edit_plan", "distill", "total", "ego_feature", "trajectories"}; losses whose
    targets are missing are absent from the dict and from "total".
    """

    def __init__(self, cfg: MLLMConfig, llm: Any = None, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        t0 = time.perf_counter()
        if llm is None or tokenizer is None:
            llm, tokenizer = load_llm(cfg.llm)
        self.llm_load_seconds = time.perf_counter() - t0
        self.tokenizer = tokenizer
        self._grammars: dict[str, Any] = {}  # answer pattern -> logits processor (generate)
        self._token_texts: list[str] | None = None  # the vocabulary's texts, shared by the grammars
        self.llm = apply_lora(llm, cfg.lora)
        d = self.llm.get_input_embeddings().embedding_dim
        self.llm_dim = d
        s = cfg.surrogate
        self.qformers = BEAMQFormers(cfg, d)
        self.ego_readout = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.bev_mask_token = nn.Parameter(torch.zeros(cfg.token_dim))
        # MLLM ego feature (LLM width) -> planner width: the space of distillation, of the
        # MLLM planning head and of Dual-mode max pooling.
        self.ego_proj = MLP3(d, s.head_hidden, cfg.planner_dim)
        self.plan_head = TrajectoryHead(cfg.planner_dim, s.head_hidden, cfg.num_commands, cfg.future_steps)
        self.bev_decoder = BEVTokenDecoder(d, cfg.token_dim, s.head_hidden, tuple(cfg.bev_hw), s.future_steps)
        self.edit_token = AgentTokenMaker(cfg.edit_descriptor_dim, cfg.token_dim)
        self._prepend_bos = self._tokenizer_adds_bos()
        # fp32 master weights: everything that trains outside the frozen LLM (Q-Formers,
        # heads, read-out and mask tokens; peft keeps LoRA adapters in fp32 too) stays in
        # float32 whatever llm.dtype is; only the LLM's inputs are cast to its dtype and
        # its hidden states back to float32 (see _prefix, _run_llm).
        self.llm_dtype = self.llm.get_input_embeddings().weight.dtype
        if cfg.llm.gradient_checkpointing:
            # Recompute each decoder layer in the backward pass (activation memory of a 7B
            # LLM over long rows); non-reentrant, so frozen inputs need no requires_grad hack.
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.ego_readout.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the trainable (master) weights and of the BEAM tokens the branch takes."""
        return self.ego_readout.dtype

    def _tokenizer_adds_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        ids = self.tokenizer("a").input_ids
        return bos is not None and len(ids) > 0 and ids[0] == bos

    def prompt_text(self, question: str) -> str:
        tok = self.tokenizer
        if self.cfg.llm.use_chat_template and getattr(tok, "chat_template", None):
            msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
            return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return f"{SYSTEM_PROMPT}\nQuestion: {question}\nAnswer: "

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _embed(self, ids: list[int]) -> torch.Tensor:
        emb = self.llm.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=self.device))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA, Q-Formers, heads): checkpoints stay small
        even for a 7B LLM, which is reloaded from its own folder."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise KeyError(f"MLLM checkpoint mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        self.load_state_dict(state, strict=False)

    # ------------------------------------------------------------------ prefix
    def _prefix(self, beam: dict[str, torch.Tensor], agent_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P, D): [BOS?] + Q-Former tokens + EGO read-out."""
        beam = {k: v.to(self.dtype) for k, v in beam.items()}
        q = self.qformers(beam, masks=None if agent_mask is None else {"agent": agent_mask})
        parts = [q.to(self.llm_dtype), self.ego_readout.expand(q.shape[0], -1, -1).to(self.llm_dtype)]
        if self._prepend_bos:
            parts.insert(0, self._embed([self.tokenizer.bos_token_id]).expand(q.shape[0], 1, -1))
        return torch.cat(parts, dim=1)

    @property
    def _beam_start(self) -> int:
        return 1 if self._prepend_bos else 0

    def _readout_pos(self) -> int:
        return self._beam_start + self.qformers.total_queries

    def _mask_bev(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Replace a random mask_ratio of BEV cells by the mask token; (bev, cells (B, N))."""
        ratio = self.cfg.surrogate.mask_ratio
        n = int(round(ratio * bev.shape[1]))
        if not self.training or n == 0:
            return bev, None
        cells = torch.rand(bev.shape[0], bev.shape[1], device=bev.device).argsort(dim=1)[:, :n]
        masked = bev.clone()
        masked.scatter_(1, cells.unsqueeze(-1).expand(-1, -1, bev.shape[2]),
                        self.bev_mask_token.expand(bev.shape[0], n, -1))
        cap = self.cfg.surrogate.max_supervised_cells
        return masked, cells[:, :cap] if cap > 0 else cells

    def _rows(self, prefixes: torch.Tensor, prefix_index: list[int], questions: list[str | None],
              answers: list[str | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded LLM rows: (embeds (R, L, D), attention (R, L), labels (R, L))."""
        eos = self.tokenizer.eos_token_id
        max_ans = self.cfg.llm.max_answer_tokens
        rows, labels = [], []
        for pi, q, a in zip(prefix_index, questions, answers):
            p_ids = self._ids(self.prompt_text(q)) if q is not None else []
            a_ids = (self._ids(a)[:max_ans] + [eos]) if a is not None else []
            text = self._embed(p_ids + a_ids) if p_ids or a_ids else prefixes.new_zeros(0, prefixes.shape[2])
            rows.append(torch.cat([prefixes[pi], text], dim=0))
            lab = [-100] * (prefixes.shape[1] + len(p_ids)) + a_ids
            labels.append(torch.tensor(lab, dtype=torch.long))
        length = max(r.shape[0] for r in rows)
        emb = prefixes.new_zeros(len(rows), length, prefixes.shape[2])
        att = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        lab = torch.full((len(rows), length), -100, dtype=torch.long, device=self.device)
        for i, (r, l) in enumerate(zip(rows, labels)):
            emb[i, : r.shape[0]] = r
            att[i, : r.shape[0]] = 1
            lab[i, : l.shape[0]] = l.to(self.device)
        return emb, att, lab

    def _run_llm(self, emb: torch.Tensor, att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate decoder layer's output, final-normed last hidden state), (R, L, D).

        Runs the decoder without its LM head: logits are only needed at answer tokens
        (see _answer_ce), and the vocabulary projection over every prefix and prompt
        token would otherwise dominate the cost of a small LLM. LoRA adapters live inside
        the decoder's modules, so they are active here too. The penultimate layer is
        caught with a forward hook rather than output_hidden_states, which keeps every
        layer's output alive and does not survive FSDP2's module wrapping.
        """
        decoder = self.llm.get_base_model().get_decoder() if hasattr(self.llm, "get_base_model") \
            else self.llm.get_decoder()
        caught: list[torch.Tensor] = []

        def hook(_m, _args, out):
            caught.append(out[0] if isinstance(out, tuple) else out)

        handle = decoder.layers[-2].register_forward_hook(hook)
        try:
            out = decoder(inputs_embeds=emb.to(self.llm_dtype), attention_mask=att, use_cache=False)
        finally:
            handle.remove()
        return caught[-1], out.last_hidden_state

    def _answer_ce(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy on answer tokens only; hidden (R, L, D) final layer."""
        target = labels[:, 1:]
        keep = target != -100
        if not keep.any():
            return hidden.sum() * 0.0
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), target[keep])

    # ------------------------------------------------------------------ public API
    def forward(self, beam: Any, qa: QABatch | None,
                targets: MLLMTargets | None = None) -> dict[str, torch.Tensor]:
        """beam: BEAM tokens as a dict or the planner's BeamTokens (see as_beam_dict)."""
        beam = as_beam_dict(beam)
        targets = targets or MLLMTargets()
        qa = qa or QABatch([], [], [])
        b = beam["bev"].shape[0]
        if qa.sample_index and (min(qa.sample_index) < 0 or max(qa.sample_index) >= b):
            raise IndexError(f"QABatch.sample_index must lie in [0, {b}), got {qa.sample_index}")
        # QA, planning, future prediction, edits and the distillation teacher see the
        # unmasked BEV, as at inference; only masked reconstruction gets a masked copy, in
        # a prefix-only pass of its own (short rows: about a third of a QA row's cost).
        prefixes = self._prefix(beam)

        # One row per QA pair, plus a prefix-only row for samples without a question,
        # so every sample has a row carrying its BEAM hidden states and ego feature.
        idx, qs, ans = list(qa.sample_index), list(qa.questions), list(qa.answers)
        for s in range(b):
            if s not in idx:
                idx.append(s), qs.append(None), ans.append(None)
        sample_row = [idx.index(s) for s in range(b)]
        n_main = len(idx)

        edits = targets.edits
        if edits is not None and len(edits):
            edit_prefix = self._edit_prefixes(beam, edits)
            all_prefix = torch.cat([prefixes, edit_prefix], dim=0)
            idx += [b + e for e in range(len(edits))]
            qs += edits.questions
            ans += edits.answers
        else:
            all_prefix, edits = prefixes, None
        emb, att, labels = self._rows(all_prefix, idx, qs, ans)
        hid_pen, hid_last = self._run_llm(emb, att)
        w = self.cfg.loss_weights
        losses: dict[str, torch.Tensor] = {}

        if len(qa):
            losses["qa"] = self._answer_ce(hid_last[:n_main], labels[:n_main])
        rows = torch.tensor(sample_row, device=self.device)
        ego_feat = self.ego_proj(hid_pen[rows, self._readout_pos()].to(self.dtype))
        trajs = self.plan_head(ego_feat)
        if targets.ego_fut_traj is not None:
            if targets.command is None:
                raise ValueError("MLLMTargets.ego_fut_traj needs MLLMTargets.command")
            pred = TrajectoryHead.select(trajs, targets.command.to(self.device))
            mask = None if targets.ego_fut_mask is None else targets.ego_fut_mask.to(pred)
            losses["plan"] = masked_trajectory_l1(pred, targets.ego_fut_traj.to(pred), mask)

        beam_ctx = hid_last[rows, self._beam_start: self._readout_pos() + 1].to(self.dtype)
        bev_in, masked_cells = self._mask_bev(beam["bev"].to(self.dtype))
        if masked_cells is not None:
            mprefix = self._prefix({**beam, "bev": bev_in})
            matt = torch.ones(mprefix.shape[:2], dtype=torch.long, device=self.device)
            mctx = self._run_llm(mprefix, matt)[-1][:, self._beam_start: self._readout_pos() + 1].to(self.dtype)
            pred = self.bev_decoder(mctx, masked_cells, step=0)
            target = torch.gather(beam["bev"].to(self.dtype), 1, masked_cells.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
            losses["bev_recon"] = F.mse_loss(pred, standardise(target.detach()))
        if targets.future_bev is not None:
            losses["bev_future"] = self._future_loss(beam_ctx, targets)
        if targets.planner_ego_feature is not None:
            losses["distill"] = distillation_loss(ego_feat, targets.planner_ego_feature.to(ego_feat), self.cfg.distill)
        if edits is not None:
            erows = slice(n_main, n_main + len(edits))
            losses["edit_qa"] = self._answer_ce(hid_last[erows], labels[erows])
            e_feat = self.ego_proj(hid_pen[erows, self._readout_pos()].to(self.dtype))
            e_pred = TrajectoryHead.select(self.plan_head(e_feat), edits.command.to(self.device))
            losses["edit_plan"] = masked_trajectory_l1(e_pred, edits.traj.to(e_pred), edits.traj_mask.to(e_pred))

        total = sum(getattr(w, k) * v for k, v in losses.items())
        return {**losses, "total": total if losses else ego_feat.sum() * 0.0,
                "ego_feature": ego_feat, "trajectories": trajs}

    def _edit_prefixes(self, beam: dict[str, torch.Tensor], edits: EditBatch) -> torch.Tensor:
        """Prefixes of edited scenes: one extra agent slot holds an inserted token, or is
        masked out for removals, in which case the removed token is masked too."""
        si = edits.sample_index.to(self.device)
        agents = beam["agent"][si]
        agents = agents.to(self.dtype)
        new = self.edit_token(edits.descriptor.to(self.device, self.dtype)).unsqueeze(1)
        ins = edits.is_insert.to(self.device)
        agents = torch.cat([agents, new], dim=1)
        mask = torch.zeros(agents.shape[:2], dtype=torch.bool, device=self.device)
        mask[~ins, -1] = True
        rem = (~ins).nonzero().flatten()
        if len(rem):
            ti = edits.token_index.to(self.device)[rem]
            if (ti < 0).any() or (ti >= beam["agent"].shape[1]).any():
                raise IndexError("EditBatch.token_index of a removal is outside the agent tokens")
            mask[rem, ti] = True
        edited = {"bev": beam["bev"][si], "ego": beam["ego"][si], "agent": agents, "map": beam["map"][si]}
        return self._prefix(edited, agent_mask=mask)

    def _future_loss(self, ctx: torch.Tensor, targets: MLLMTargets) -> torch.Tensor:
        fut = targets.future_bev.to(self.device, self.dtype)
        b, steps, hw, c = fut.shape
        if steps > self.cfg.surrogate.future_steps or hw != self.qformers.bev_hw[0] * self.qformers.bev_hw[1]:
            raise ValueError(f"future_bev has shape {tuple(fut.shape)}; expected (B, <= "
                             f"{self.cfg.surrogate.future_steps}, {self.qformers.bev_hw[0] * self.qformers.bev_hw[1]}, C)")
        valid = targets.future_bev_mask.to(fut) if targets.future_bev_mask is not None else fut.new_ones(b, steps)
        cap = self.cfg.surrogate.max_supervised_cells
        n = hw if cap <= 0 else min(cap, hw)
        total, count = fut.new_zeros(()), valid.sum().clamp(min=1.0)
        for k in range(steps):
            cells = torch.rand(b, hw, device=self.device).argsort(dim=1)[:, :n]
            pred = self.bev_decoder(ctx, cells, step=k + 1)
            tgt = standardise(torch.gather(fut[:, k], 1, cells.unsqueeze(-1).expand(-1, -1, c)).detach())
            per = ((pred - tgt) ** 2).mean(dim=(1, 2))
            total = total + (per * valid[:, k]).sum()
        return total / count

    def answer_loss(self, beam: Any, qa: QABatch, reduce: bool = True) -> torch.Tensor:
        """Next-token cross-entropy of the answers given the scene and the question only
        (no surrogate task): QA fine-tuning and teacher-forced evaluation. With
        reduce=False, (R,) per-row token accuracy (argmax = reference token) instead."""
        beam = as_beam_dict(beam)
        prefixes = self._prefix(beam)
        emb, att, labels = self._rows(prefixes, list(qa.sample_index), list(qa.questions), list(qa.answers))
        hidden = self._run_llm(emb, att)[-1]
        if reduce:
            return self._answer_ce(hidden, labels)
        target = labels[:, 1:]
        keep = target != -100
        hit = torch.zeros_like(target, dtype=torch.bool)
        hit[keep] = self.llm.get_output_embeddings()(hidden[:, :-1][keep]).argmax(-1) == target[keep]
        return hit.sum(1).float() / keep.sum(1).clamp(min=1).float()

    @torch.no_grad()
    def dual_ego_feature(self, beam: Any) -> torch.Tensor:
        """(B, planner_dim) MLLM ego feature for Dual inference (max-pooled by the caller
        with the planner's own feature, then fed to both planning heads)."""
        return self.ego_proj(self.readout_hidden(beam))

    @torch.no_grad()
    def readout_hidden(self, beam: Any) -> torch.Tensor:
        """(B, llm_dim) penultimate LLM layer at the EGO read-out token, the input of
        ego_proj (Dual calibration caches it: the LLM does not change there)."""
        beam = as_beam_dict(beam)
        prefixes = self._prefix(beam)
        att = torch.ones(prefixes.shape[:2], dtype=torch.long, device=self.device)
        return self._run_llm(prefixes, att)[-2][:, self._readout_pos()].to(self.dtype)

    def plan_from_feature(self, feature: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """MLLM planning head on a (B, planner_dim) feature -> (B, 6, 2) for the command."""
        return TrajectoryHead.select(self.plan_head(feature), command)

    def _grammar(self, pattern: Any):
        """The grammar's logits processor, built once per pattern; the vocabulary's texts are
        decoded once for all of them."""
        from .constrained import GrammarLogitsProcessor, token_texts

        key = pattern if isinstance(pattern, str) else pattern.pattern
        if key not in self._grammars:
            if self._token_texts is None:
                self._token_texts = token_texts(self.tokenizer)
            self._grammars[key] = GrammarLogitsProcessor(key, self.tokenizer, self._token_texts)
        return self._grammars[key]

    @torch.no_grad()
    def generate(self, beam: Any, question: str, max_new_tokens: int = 128, answer_pattern: Any = None) -> str:
        """Greedy answer text about one scene (B must be 1); run-time reasoning for the node.

        answer_pattern: a regular expression the whole answer must match (its grammar,
        e.g. qa.generate.PLANNING_PATTERN): decoding is held to it (constrained.py)."""
        beam = as_beam_dict(beam)
        if beam["bev"].shape[0] != 1:
            raise ValueError(f"generate() takes one scene (B=1), got B={beam['bev'].shape[0]}")
        prefix = self._prefix(beam)
        emb = torch.cat([prefix[0], self._embed(self._ids(self.prompt_text(question)))], dim=0)[None]
        att = torch.ones(emb.shape[:2], dtype=torch.long, device=self.device)
        # Plain greedy decoding, the distribution training fits: no repetition penalty and
        # no n-gram ban, which would make answers that repeat words ("a car ... a car")
        # impossible to produce.
        extra = {}
        if answer_pattern is not None:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList([self._grammar(answer_pattern)])
        ids = self.llm.generate(inputs_embeds=emb, attention_mask=att, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                eos_token_id=self.tokenizer.eos_token_id, **extra)
        return self.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
