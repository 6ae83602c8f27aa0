"""OmniLatentModel: one backbone, any input modality to any output modality.

Sequence: [target token, source token(s), content tokens] -> pre-norm transformer blocks (with
any registered Latent Neural Hooks joining at their layers) -> final norm -> target decoder
(one query per output position, see `decoder.py`) -> modality output head. Text output is
tied to the text embedding, scaled as `text_logits` says.

Notation: B batch, S sequence length (prefix + content), N content tokens, L target tokens,
D model dim, V vocabulary."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.errors import ConfigError, HookError
from omnilatent.model.attention import Block
from omnilatent.model.decoder import TargetDecoder
from omnilatent.model.hooks import LatentNeuralHook
from omnilatent.model.layers import RMSNorm, rope_tables
from omnilatent.model.modalities import MODALITY_INDEX, REGISTRY
from pipeline.modalities import PAD_ID

INIT_STD = 0.02  # of every weight matrix and embedding at initialisation


class OmniLatentModel(nn.Module):
    def __init__(self, config: OmniLatentConfig) -> None:
        super().__init__()
        if not isinstance(config, OmniLatentConfig):
            raise ConfigError(f"config must be an OmniLatentConfig, got {type(config).__name__}")
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        d = config.hidden_dim
        self.text_embed = nn.Embedding(config.vocab_size, d)
        self.encoders = nn.ModuleDict({name: parts.encoder(config)
                                       for name, parts in REGISTRY.items() if parts.encoder})
        self.modality_embed = nn.Embedding(len(MODALITIES), d)  # added to content tokens
        self.source_tokens = nn.Embedding(len(MODALITIES), d)
        self.target_tokens = nn.Embedding(len(MODALITIES), d)
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_hidden_dim, config.norm_eps, config.dropout)
            for _ in range(config.num_layers))
        self.final_norm = RMSNorm(d, config.norm_eps)
        self.decoder = TargetDecoder(config)
        self.decoders = nn.ModuleDict({name: parts.decoder(config)
                                       for name, parts in REGISTRY.items() if parts.decoder})
        self.hooks = nn.ModuleDict()
        # RoPE cos/sin of positions 0..n-1, grown on demand (not saved: they are a function of
        # the config); rows do not depend on n, so a slice equals a fresh table.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                               nn.ConvTranspose3d)):
            nn.init.normal_(module.weight, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=INIT_STD)

    def text_logits(self, hidden: Tensor) -> Tensor:
        """(..., D) normed hidden states -> (..., V) logits through the tied text embedding,
        scaled by 1 / (INIT_STD * sqrt(D)) so that they start with unit spread at any width.

        Unscaled, a hidden state of RMS 1 (norm sqrt(D)) against rows of std 0.02 gave logits
        of std 0.23 at D = 128: a softmax so flat that AdamW, moving each weight by about the
        learning rate per step, needed hundreds of text steps to make it confident, and the
        tiny model's transcripts came out misspelt (README, "Design choices")."""
        scale = 1.0 / (INIT_STD * math.sqrt(self.config.hidden_dim))
        return hidden @ self.text_embed.weight.t() * scale

    def previous_text(self, ids: Tensor) -> Tensor:
        """Embedded ids (..., D) as the autoregressive decoder's "token before": scaled by
        sqrt(D) (as the original transformer's embeddings) to the size of the other parts of a
        text query, which the raw rows (std 0.02) were ten times smaller than, so the decoder
        hardly saw which letter it had just written ("diaaond")."""
        return self.text_embed(ids) * math.sqrt(self.config.hidden_dim)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- hooks
    def register_hook(self, hook: LatentNeuralHook) -> LatentNeuralHook:
        """Attach a hook; its parameters join ``model.parameters()`` until removed."""
        if not isinstance(hook, LatentNeuralHook):
            raise HookError(f"expected a LatentNeuralHook, got {type(hook).__name__}")
        if hook.dim != self.config.hidden_dim:
            raise HookError(f"hook {hook.name!r} has dim {hook.dim} but the model's hidden_dim is "
                            f"{self.config.hidden_dim}")
        bad = [layer for layer in hook.target_layers if layer >= self.config.num_layers]
        if bad:
            raise HookError(f"hook {hook.name!r} targets layer(s) {bad}, but the model has layers "
                            f"0..{self.config.num_layers - 1}")
        if hook.name in self.hooks:
            raise HookError(f"a hook named {hook.name!r} is already registered; remove it first")
        # The hook's tokens join the residual stream, so they must share its device and dtype
        # (a bf16 model with an fp32 hook would fail in attention, or upcast silently).
        param = next(self.parameters())
        self.hooks[hook.name] = hook.to(device=param.device, dtype=param.dtype)
        return hook

    def remove_hook(self, name: str) -> LatentNeuralHook:
        """Detach a hook and return it; the base model's weights are untouched."""
        if name not in self.hooks:
            known = ", ".join(self.hooks) or "none"
            raise HookError(f"no hook named {name!r} is registered (registered: {known})")
        hook = self.hooks[name]
        del self.hooks[name]
        return hook

    # ----------------------------------------------------------------- encoding
    def _encode(self, modality: str, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Content tokens (B, N, D) and a (B, N) keep-mask for text padding (None = all kept)."""
        if modality not in MODALITY_INDEX:
            raise ConfigError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        parts = REGISTRY[modality]
        if not parts.accepts(self.config, x):
            raise ConfigError(f"{modality} input must have shape {parts.shape(self.config)}, "
                              f"got {tuple(x.shape)} ({x.dtype})")
        if parts.encoder is None:  # text ids
            tokens = self.text_embed(x)  # (B, N, D)
            keep = x != PAD_ID
        else:
            tokens = self.encoders[modality](x.to(self.text_embed.weight.dtype))
            keep = None
        return tokens + self.modality_embed.weight[MODALITY_INDEX[modality]], keep

    def _target_grid(self, modality: str, source_len: int, target: Tensor | None,
                     size: int | None) -> tuple[tuple[int, ...], int]:
        """(the target's token grid, its size): the size along its own axis is the target's,
        else the one asked for, else the modality's default (text: the source's length)."""
        parts = REGISTRY[modality]
        if parts.size_axis is not None and target is not None:
            size = target.shape[parts.size_axis]
        elif parts.size_axis is None or not size:
            size = parts.default_size(self.config) or source_len
        return parts.grid(self.config, size), size

    # ----------------------------------------------------------------- backbone
    def _rope(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """RoPE tables for `length` positions from the cache, rebuilt (float32, on `device`)
        when it is shorter, elsewhere, or was cast by ``model.to(dtype)``."""
        cached = self.rope_cos
        if cached.shape[0] < length or cached.device != device or cached.dtype != torch.float32:
            self.rope_cos, self.rope_sin = rope_tables(
                max(length, cached.shape[0]), self.config.head_dim, self.config.rope_theta,
                device)
        return self.rope_cos[:length], self.rope_sin[:length]

    def _backbone(self, x: Tensor, keep: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """x: (B, S, D) -> (B, S, D), plus the final state of every hook (B, K_i, D)."""
        b, s, _ = x.shape
        cos, sin = self._rope(s, x.device)  # (S, Dh/2) each
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, S)
        states: dict[str, Tensor] = {}
        for index, block in enumerate(self.blocks):
            active = [h for h in self.hooks.values() if index in h.target_layers]
            for hook in active:
                states[hook.name] = (hook.carry(states[hook.name]) if hook.name in states
                                     else hook.initial_state(b))
            hook_in = [states[h.name] for h in active]
            gates = [h.gate_value() for h in active]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, hook_out = checkpoint(block, x, cos, sin, mask, hook_in, gates,
                                         use_reentrant=False)
            else:
                x, hook_out = block(x, cos, sin, mask, hook_in, gates)
            for hook, state in zip(active, hook_out, strict=True):
                states[hook.name] = state
        return self.final_norm(x), states

    def _text_logits(self, memory: Tensor, mask: Tensor | None, length: int,
                     target: Tensor | None, vocab_limit: int | None = None,
                     eos_id: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, L, V) for L text positions, and the greedy ids (B, L) when generating.

        With a target (teacher forcing) or parallel decoding this is one pass. Without a
        target, autoregressive decoding is greedy, one position per step with the decoder's
        keys and values cached; ``vocab_limit`` keeps choices below the tokenizer's size, and
        rows stop after ``eos_id`` (later ids are padding), all rows at once ending early."""
        decoder = self.decoder
        if target is not None or not decoder.autoregressive_text:
            previous = None
            if decoder.autoregressive_text:
                previous = decoder.shifted(self.previous_text(target))  # (B, L, D)
            hidden = decoder(memory, "text", (length,), mask, previous)  # (B, L, D)
            logits = self.text_logits(hidden)  # (B, L, V)
            ids = None if target is not None else _greedy(logits, vocab_limit)
            return logits, ids
        batch = memory.shape[0]
        state = decoder.start_text(memory, length)
        previous = decoder.start.to(memory.dtype).expand(batch, -1)  # (B, D)
        chosen: list[Tensor] = []
        steps: list[Tensor] = []
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)  # (B,)
        for position in range(length):
            hidden = decoder.step_text(state, position, previous, mask)  # (B, D)
            logits = self.text_logits(hidden)  # (B, V)
            steps.append(logits)
            choice = _greedy(logits, vocab_limit).masked_fill(done, PAD_ID)  # (B,)
            chosen.append(choice)
            previous = self.previous_text(choice)  # (B, D)
            if eos_id is not None:
                done |= choice == eos_id
                if bool(done.all()):
                    break
        ids = torch.stack(chosen, dim=1)  # (B, steps)
        logits = torch.stack(steps, dim=1)  # (B, steps, V)
        if logits.shape[1] < length:  # every row ended: the rest is padding
            pad = logits.new_zeros(batch, length - logits.shape[1], logits.shape[2])
            logits = torch.cat([logits, pad], dim=1)
            ids = torch.cat([ids, ids.new_zeros(batch, length - ids.shape[1])], dim=1)
        return logits, ids

    def forward_multimodal(self, inputs: dict[str, Tensor], target_modalities: list[str],
                           targets: dict[str, Tensor] | None = None,
                           target_lengths: dict[str, int] | None = None) -> dict[str, Any]:
        """Encode every input into one sequence and decode each target modality from it.

        Returns ``{"outputs": {modality: tensor}, "hook_states": {...}}`` and, when
        ``targets`` holds a target, ``"losses": {modality: scalar}`` and ``"loss"`` (their sum)."""
        if not inputs:
            raise ConfigError("forward_multimodal needs at least one input modality")
        targets = targets or {}
        target_lengths = target_lengths or {}
        outputs: dict[str, Tensor] = {}
        losses: dict[str, Tensor] = {}
        hook_states: dict[str, dict[str, Tensor]] = {}
        for target_mod in target_modalities:
            target = targets.get(target_mod)
            out, states = self._predict(inputs, target_mod, target, target_lengths.get(target_mod))
            outputs[target_mod] = out
            hook_states[target_mod] = states
            if target is not None:
                losses[target_mod] = REGISTRY[target_mod].loss(out, target)
        result: dict[str, Any] = {"outputs": outputs, "hook_states": hook_states}
        if losses:
            result["losses"] = losses
            result["loss"] = torch.stack(list(losses.values())).sum()
        return result

    def _run_backbone(self, inputs: dict[str, Tensor], target_mod: str
                      ) -> tuple[Tensor, Tensor | None, int, dict[str, Tensor]]:
        """Backbone output (B, S, D) for ``[target token, source tokens, content]``, its
        keep-mask (B, S) or None, the prefix length, and the hook states."""
        if target_mod not in MODALITY_INDEX:
            raise ConfigError(f"unknown target modality {target_mod!r}; "
                              f"expected one of {MODALITIES}")
        encoded = [(m, *self._encode(m, x)) for m, x in inputs.items()]
        batch = encoded[0][1].shape[0]
        if any(tokens.shape[0] != batch for _, tokens, _ in encoded):
            raise ConfigError("all input modalities must have the same batch size")
        device = encoded[0][1].device
        prefix_len = 1 + len(encoded)
        # Rows by slicing, not an index tensor: building one from a list every forward is a
        # blocking host-to-device copy on CUDA (the rows, and their gradients, are the same).
        t_idx = MODALITY_INDEX[target_mod]
        rows = [self.target_tokens.weight[t_idx:t_idx + 1]]
        rows += [self.source_tokens.weight[MODALITY_INDEX[m]:MODALITY_INDEX[m] + 1]
                 for m, _, _ in encoded]
        prefix = torch.cat(rows)  # (1 + n_sources, D)
        seq = torch.cat([prefix.unsqueeze(0).expand(batch, -1, -1)]
                        + [tokens for _, tokens, _ in encoded], dim=1)  # (B, S, D)
        keep = None
        if any(k is not None for _, _, k in encoded):
            parts = [torch.ones(batch, prefix_len, dtype=torch.bool, device=device)]
            parts += [k if k is not None else torch.ones(t.shape[:2], dtype=torch.bool,
                                                         device=device)
                      for _, t, k in encoded]
            keep = torch.cat(parts, dim=1)  # (B, S)
        hidden, states = self._backbone(seq, keep)
        return hidden, keep, prefix_len, states

    def _predict(self, inputs: dict[str, Tensor], target_mod: str, target: Tensor | None,
                 target_length: int | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The output for one target modality (and the hook states of its backbone pass)."""
        hidden, keep, prefix_len, states = self._run_backbone(inputs, target_mod)
        content = hidden[:, prefix_len:]  # (B, N, D)
        grid, size = self._target_grid(target_mod, content.shape[1], target, target_length)
        length = math.prod(grid)
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, S)
        # Token i of the output is token i of the backbone only where they are the same
        # place on the same grid: one source of the target's own modality, equal lengths.
        same_grid = list(inputs) == [target_mod] and content.shape[1] == length
        if target_mod == "text":
            if same_grid:
                return self.text_logits(content), states  # (B, L, V)
            logits, _ = self._text_logits(hidden, mask, length, target)
            return logits, states
        decoded = content if same_grid else self.decoder(hidden, target_mod, grid, mask)
        return self.decoders[target_mod](decoded, size), states

    @torch.no_grad()
    def generate_text(self, source_modality: str, source: Tensor, max_length: int,
                      vocab_limit: int | None = None, eos_id: int | None = None) -> Tensor:
        """Greedy token ids (B, max_length) for ``source``; padding (0) after ``eos_id``.

        ``vocab_limit`` restricts choices to ids below it (the tokenizer's vocabulary, when the
        model's is larger), so every id decodes to text."""
        hidden, keep, _, _ = self._run_backbone({source_modality: source}, "text")
        mask = None if keep is None else keep[:, None, None, :]
        _, ids = self._text_logits(hidden, mask, max_length, None, vocab_limit, eos_id)
        assert ids is not None  # without a target, _text_logits always chooses ids
        if eos_id is not None:  # parallel decoding chooses every position: cut at EOS
            ended = (ids == eos_id).long().cumsum(dim=1) - (ids == eos_id).long()  # (B, L)
            ids = ids.masked_fill(ended > 0, PAD_ID)
        return ids

    def forward(self, source_modality: str, source: Tensor, target_modality: str,
                target: Tensor | None = None, target_length: int | None = None) -> dict[str, Any]:
        """One source to one target: ``{"output", "hook_states"}`` plus ``"loss"`` if a target
        is given. Without a target, text output has the source's token count (or
        ``target_length``), audio ``config.audio_frames`` frames, video ``config.video_frames``."""
        result = self.forward_multimodal(
            {source_modality: source},
            [target_modality],
            targets=None if target is None else {target_modality: target},
            target_lengths=None if target_length is None else {target_modality: target_length})
        out = {"output": result["outputs"][target_modality],
               "hook_states": result["hook_states"][target_modality]}
        if "loss" in result:
            out["loss"] = result["loss"]
        return out

    def reconstruct(self, modality: str, x: Tensor) -> dict[str, Any]:
        """Auto-encode ``x`` through the shared latent space (output plus loss against x)."""
        return self.forward(modality, x, modality, target=x)


def _greedy(logits: Tensor, vocab_limit: int | None) -> Tensor:
    """Argmax over the last axis, restricted to ids below ``vocab_limit`` when given."""
    if vocab_limit is not None:
        logits = logits[..., :vocab_limit]
    return logits.argmax(dim=-1)
