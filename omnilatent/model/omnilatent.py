"""OmniLatentModel: one backbone, any input modality to any output modality.

Sequence: [target token, source token(s), content tokens] -> pre-norm transformer blocks (with
any registered Latent Neural Hooks joining at their layers) -> final norm -> sequence adapter to
the target length -> target decoder. Text output is tied to the text embedding.

Notation: B batch, S sequence length (prefix + content), N content tokens, L target tokens,
D model dim, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omnilatent.config import MODALITIES, OmniLatentConfig
from omnilatent.errors import ConfigError, HookError
from omnilatent.model.adapter import SequenceAdapter
from omnilatent.model.attention import Block
from omnilatent.model.codecs import (
    AudioDecoder,
    AudioEncoder,
    ImageDecoder,
    ImageEncoder,
    VideoDecoder,
    VideoEncoder,
)
from omnilatent.model.hooks import LatentNeuralHook
from omnilatent.model.layers import RMSNorm, rope_tables
from omnilatent.model.losses import PAD_ID, modality_loss

MODALITY_INDEX = {name: i for i, name in enumerate(MODALITIES)}


class OmniLatentModel(nn.Module):
    def __init__(self, config: OmniLatentConfig) -> None:
        super().__init__()
        if not isinstance(config, OmniLatentConfig):
            raise ConfigError(f"config must be an OmniLatentConfig, got {type(config).__name__}")
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        d = config.hidden_dim
        self.text_embed = nn.Embedding(config.vocab_size, d)
        self.encoders = nn.ModuleDict({
            "audio": AudioEncoder(config),
            "image": ImageEncoder(config),
            "video": VideoEncoder(config),
        })
        self.modality_embed = nn.Embedding(len(MODALITIES), d)  # added to content tokens
        self.source_tokens = nn.Embedding(len(MODALITIES), d)
        self.target_tokens = nn.Embedding(len(MODALITIES), d)
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_hidden_dim, config.norm_eps, config.dropout)
            for _ in range(config.num_layers)
        )
        self.final_norm = RMSNorm(d, config.norm_eps)
        self.adapter = SequenceAdapter(config)
        self.decoders = nn.ModuleDict({
            "audio": AudioDecoder(config),
            "image": ImageDecoder(config),
            "video": VideoDecoder(config),
        })
        self.hooks = nn.ModuleDict()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                               nn.ConvTranspose3d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- hooks
    def register_hook(self, hook: LatentNeuralHook) -> LatentNeuralHook:
        """Attach a hook; its parameters join ``model.parameters()`` until removed."""
        if not isinstance(hook, LatentNeuralHook):
            raise HookError(f"expected a LatentNeuralHook, got {type(hook).__name__}")
        if hook.dim != self.config.hidden_dim:
            raise HookError(
                f"hook {hook.name!r} has dim {hook.dim} but the model's hidden_dim is "
                f"{self.config.hidden_dim}"
            )
        bad = [layer for layer in hook.target_layers if layer >= self.config.num_layers]
        if bad:
            raise HookError(
                f"hook {hook.name!r} targets layer(s) {bad}, but the model has layers "
                f"0..{self.config.num_layers - 1}"
            )
        if hook.name in self.hooks:
            raise HookError(f"a hook named {hook.name!r} is already registered; remove it first")
        param = next(self.parameters())
        self.hooks[hook.name] = hook.to(device=param.device)
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
    def _check_input(self, modality: str, x: Tensor) -> None:
        cfg = self.config
        if modality not in MODALITY_INDEX:
            raise ConfigError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        if modality == "text":
            ok = x.dim() == 2 and not x.is_floating_point()
            expected = "(B, T) integer token ids"
        elif modality == "audio":
            ok = x.dim() == 3 and x.shape[1] == cfg.n_mels
            expected = f"(B, {cfg.n_mels}, T_frames) log-mel"
        elif modality == "image":
            ok = x.dim() == 4 and tuple(x.shape[1:]) == (3, cfg.image_size, cfg.image_size)
            expected = f"(B, 3, {cfg.image_size}, {cfg.image_size})"
        else:
            ok = (x.dim() == 5 and x.shape[1] == 3 and x.shape[2] % cfg.tubelet_size == 0
                  and tuple(x.shape[3:]) == (cfg.video_size, cfg.video_size))
            expected = (f"(B, 3, T_frames (multiple of {cfg.tubelet_size}), "
                        f"{cfg.video_size}, {cfg.video_size})")
        if not ok:
            raise ConfigError(
                f"{modality} input must have shape {expected}, got {tuple(x.shape)} "
                f"({x.dtype})"
            )

    def _encode(self, modality: str, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Content tokens (B, N, D) and a (B, N) keep-mask for text padding (None = all kept)."""
        self._check_input(modality, x)
        if modality == "text":
            tokens = self.text_embed(x)  # (B, N, D)
            keep = x != PAD_ID
        else:
            tokens = self.encoders[modality](x.to(self.text_embed.weight.dtype))
            keep = None
        return tokens + self.modality_embed.weight[MODALITY_INDEX[modality]], keep

    def _target_length(self, modality: str, source_len: int, target: Tensor | None,
                       target_length: int | None) -> tuple[int, int]:
        """(decoder tokens L, output size along time) for the target modality."""
        cfg = self.config
        if modality == "text":
            n = target.shape[1] if target is not None else (target_length or source_len)
            return n, n
        if modality == "audio":
            frames = target.shape[-1] if target is not None else (target_length or cfg.audio_frames)
            return AudioDecoder.tokens_for(frames, cfg.audio_stride), frames
        if modality == "image":
            return cfg.image_tokens, cfg.image_size
        frames = target.shape[2] if target is not None else (target_length or cfg.video_frames)
        if frames % cfg.tubelet_size:
            raise ConfigError(f"video target length {frames} must be a multiple of "
                              f"tubelet_size ({cfg.tubelet_size})")
        return self.decoders["video"].tokens_for(frames), frames

    # ----------------------------------------------------------------- backbone
    def _backbone(self, x: Tensor, keep: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """x: (B, S, D) -> (B, S, D), plus the final state of every hook (B, K_i, D)."""
        b, s, _ = x.shape
        cos, sin = rope_tables(s, self.config.head_dim, self.config.rope_theta, x.device)
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

    def forward_multimodal(
        self,
        inputs: dict[str, Tensor],
        target_modalities: list[str],
        targets: dict[str, Tensor] | None = None,
        target_lengths: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Encode every input into one sequence and decode each target modality from it.

        Returns ``{"outputs": {modality: tensor}, "hook_states": {...}}`` and, when
        ``targets`` holds a target, ``"losses": {modality: scalar}`` and ``"loss"`` (their sum).
        """
        if not inputs:
            raise ConfigError("forward_multimodal needs at least one input modality")
        targets = targets or {}
        target_lengths = target_lengths or {}
        encoded = [(m, *self._encode(m, x)) for m, x in inputs.items()]
        batch = encoded[0][1].shape[0]
        if any(tokens.shape[0] != batch for _, tokens, _ in encoded):
            raise ConfigError("all input modalities must have the same batch size")
        any_mask = any(keep is not None for _, _, keep in encoded)
        device = encoded[0][1].device
        source_ids = torch.tensor([MODALITY_INDEX[m] for m, _, _ in encoded], device=device)
        prefix_len = 1 + len(encoded)

        outputs: dict[str, Tensor] = {}
        losses: dict[str, Tensor] = {}
        hook_states: dict[str, dict[str, Tensor]] = {}
        for target_mod in target_modalities:
            if target_mod not in MODALITY_INDEX:
                raise ConfigError(f"unknown target modality {target_mod!r}; "
                                  f"expected one of {MODALITIES}")
            t_idx = MODALITY_INDEX[target_mod]
            prefix = torch.cat([self.target_tokens.weight[t_idx:t_idx + 1],
                                self.source_tokens(source_ids)])  # (1 + n_sources, D)
            seq = torch.cat([prefix.unsqueeze(0).expand(batch, -1, -1)]
                            + [tokens for _, tokens, _ in encoded], dim=1)  # (B, S, D)
            keep = None
            if any_mask:
                parts = [torch.ones(batch, prefix_len, dtype=torch.bool, device=device)]
                parts += [k if k is not None else torch.ones(t.shape[:2], dtype=torch.bool,
                                                             device=device)
                          for _, t, k in encoded]
                keep = torch.cat(parts, dim=1)  # (B, S)
            hidden, states = self._backbone(seq, keep)
            content = hidden[:, prefix_len:]  # (B, N, D)
            padding = None if keep is None else ~keep[:, prefix_len:]
            target = targets.get(target_mod)
            length, size = self._target_length(target_mod, content.shape[1], target,
                                               target_lengths.get(target_mod))
            adapted = self.adapter(content, length, t_idx, padding)  # (B, L, D)
            if target_mod == "text":
                out = adapted @ self.text_embed.weight.t()  # (B, L, V), tied weights
            elif target_mod == "audio":
                out = self.decoders["audio"](adapted, size)  # (B, M, T)
            else:
                out = self.decoders[target_mod](adapted)
            outputs[target_mod] = out
            hook_states[target_mod] = states
            if target is not None:
                losses[target_mod] = modality_loss(target_mod, out, target)
        result: dict[str, Any] = {"outputs": outputs, "hook_states": hook_states}
        if losses:
            result["losses"] = losses
            result["loss"] = torch.stack(list(losses.values())).sum()
        return result

    def forward(
        self,
        source_modality: str,
        source: Tensor,
        target_modality: str,
        target: Tensor | None = None,
        target_length: int | None = None,
    ) -> dict[str, Any]:
        """One source to one target: ``{"output", "hook_states"}`` plus ``"loss"`` if a target
        is given. Without a target, text output has the source's token count (or
        ``target_length``), audio ``config.audio_frames`` frames, video ``config.video_frames``."""
        result = self.forward_multimodal(
            {source_modality: source},
            [target_modality],
            targets=None if target is None else {target_modality: target},
            target_lengths=None if target_length is None else {target_modality: target_length},
        )
        out = {"output": result["outputs"][target_modality],
               "hook_states": result["hook_states"][target_modality]}
        if "loss" in result:
            out["loss"] = result["loss"]
        return out

    def reconstruct(self, modality: str, x: Tensor) -> dict[str, Any]:
        """Auto-encode ``x`` through the shared latent space (output plus loss against x)."""
        return self.forward(modality, x, modality, target=x)
