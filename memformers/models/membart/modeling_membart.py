"""PyTorch MemBART: BART whose encoder reads and rewrites a small set of recurrent memory slots at every segment.

A drop-in for the reference implementation (qywu/memformers): the same parameter names and the same function, so
its released `membart-base` / `membart-large` state dicts load with no missing or unexpected keys. What differs is
how the function is computed: one fused `scaled_dot_product_attention` call with a boolean mask built once per
forward (the reference materialises float masks and loops over the memory slots in Python).

Per segment, with `M = config.memory_len`:

    memory     = memory_layer_norm((1 - memory_resets) * memory_states + memory_bias)   # old_memory
    for layer:   joint attention over [memory ; tokens] (memory rows use the mem_* projections),
                 then BART's post-LN residual blocks, separately for tokens and for memory
    alpha      = memory_gate_net(memory)                                                # [B, M, 1]
    new_memory = alpha * memory + (1 - alpha) * old_memory

The decoder cross-attends over `[new_memory ; token_states]` with the mask `[True]*M + attention_mask`.

This file depends on `torch` and `transformers` only: `pretrain/export_hf.py` writes it next to exported weights so
`AutoModelForSeq2SeqLM.from_pretrained(dir, trust_remote_code=True)` works without the `memformers` package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.models.bart.modeling_bart import (
    BartDecoder,
    BartLearnedPositionalEmbedding,
    BartPreTrainedModel,
    BartScaledWordEmbedding,
    shift_tokens_right,
)

from .configuration_membart import MemBartConfig

# ----------------------------------------------------------------------------------------------------------- outputs


@dataclass
class MemBartEncoderOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, memory_len + seq_len, d_model)`):
            `[new_memory ; token_states]`, what the decoder cross-attends over.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): token states `(batch, seq_len, d_model)` after the
            embeddings and after each layer.
        attentions (`tuple(torch.FloatTensor)`, *optional*): per layer `(batch, heads, M + seq_len, M + seq_len)`.
        memory_states (`torch.FloatTensor` of shape `(batch, memory_len, d_model)`): the rewritten memory, to pass
            as `memory_states` with the next segment.
        encoder_attention_mask (`torch.BoolTensor` of shape `(batch, memory_len + seq_len)`): the cross-attention
            mask matching `last_hidden_state` (memory slots always visible, padded tokens masked).
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    memory_states: torch.FloatTensor | None = None
    encoder_attention_mask: torch.BoolTensor | None = None


@dataclass
class MemBartSeq2SeqModelOutput(Seq2SeqModelOutput):
    """[`Seq2SeqModelOutput`] plus `memory_states` `(batch, memory_len, d_model)`, the memory after this segment."""

    memory_states: torch.FloatTensor | None = None


@dataclass
class MemBartSeq2SeqLMOutput(Seq2SeqLMOutput):
    """[`Seq2SeqLMOutput`] plus `memory_states` `(batch, memory_len, d_model)`, the memory after this segment."""

    memory_states: torch.FloatTensor | None = None


# ------------------------------------------------------------------------------------------------------------ layers


def fused_attention_mask(token_mask: torch.Tensor, memory_len: int) -> torch.Tensor:
    """The boolean mask (True = may attend) of the joint attention over `[memory ; tokens]`.

    Args:
        token_mask: `(batch, seq_len)` bool, False at padded tokens.
    Returns:
        `(batch, 1, M + seq_len, M + seq_len)`: token rows see every memory slot and every non-pad token; memory
        slot i sees only itself among the memory slots, plus every non-pad token. No row is fully masked.
    """
    batch, seq_len = token_mask.shape
    visible_keys = F.pad(token_mask, (memory_len, 0), value=True)  # [B, M+S]
    memory_rows = torch.cat(
        [
            torch.eye(memory_len, dtype=torch.bool, device=token_mask.device).expand(batch, -1, -1),
            token_mask[:, None, :].expand(-1, memory_len, -1),
        ],
        dim=2,
    )  # [B, M, M+S]
    token_rows = visible_keys[:, None, :].expand(-1, seq_len, -1)  # [B, S, M+S]
    return torch.cat([memory_rows, token_rows], dim=1)[:, None]


class MemBartEncoderAttention(nn.Module):
    """One multi-head attention over the concatenation `[memory ; tokens]`.

    Memory rows are projected with `mem_{q,k,v,out}_proj`, token rows with `{q,k,v,out}_proj`; queries are scaled by
    `head_dim ** -0.5`. Parameter names are the reference's.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}).")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout

        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

        self.mem_k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.mem_v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.mem_q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.mem_out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: `(batch, seq_len, d_model)` token states.
            memory_states: `(batch, memory_len, d_model)`.
            attention_mask: `(batch, 1, M + seq_len, M + seq_len)` bool, from [`fused_attention_mask`].
        Returns:
            token output `(batch, seq_len, d_model)`, memory output `(batch, memory_len, d_model)` and, when asked,
            the attention probabilities `(batch, heads, M + seq_len, M + seq_len)`.
        """
        batch, memory_len = memory_states.shape[:2]

        def split_heads(memory_part: torch.Tensor, token_part: torch.Tensor) -> torch.Tensor:
            joint = torch.cat([memory_part, token_part], dim=1)
            return joint.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        query = split_heads(self.mem_q_proj(memory_states), self.q_proj(hidden_states))
        key = split_heads(self.mem_k_proj(memory_states), self.k_proj(hidden_states))
        value = split_heads(self.mem_v_proj(memory_states), self.v_proj(hidden_states))
        dropout = self.dropout if self.training else 0.0

        attn_weights = None
        if output_attentions:  # the probabilities are wanted: compute them explicitly
            scores = torch.matmul(query * self.scaling, key.transpose(-1, -2))
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            attn_weights = scores.softmax(dim=-1)
            attn_output = torch.matmul(F.dropout(attn_weights, p=dropout, training=self.training), value)
        else:
            attn_output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=self.scaling
            )
        attn_output = attn_output.transpose(1, 2).reshape(batch, -1, self.embed_dim)
        memory_output = self.mem_out_proj(attn_output[:, :memory_len])
        token_output = self.out_proj(attn_output[:, memory_len:])
        return token_output, memory_output, attn_weights


class MemBartEncoderLayer(GradientCheckpointingLayer):
    """The fused attention, then BART's post-LN residual blocks with separate weights for tokens and for memory."""

    def __init__(self, config: MemBartConfig):
        super().__init__()
        self.embed_dim = config.d_model
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout

        self.self_attn = MemBartEncoderAttention(
            self.embed_dim, config.encoder_attention_heads, dropout=config.attention_dropout
        )
        # token stream (BART's names)
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.fc1 = nn.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)
        # memory stream (the reference's twins)
        self.mem_self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.mem_fc1 = nn.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.mem_fc2 = nn.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.mem_final_layer_norm = nn.LayerNorm(self.embed_dim)

    def _residual_blocks(self, residual, attn_output, attn_layer_norm, fc1, fc2, final_layer_norm) -> torch.Tensor:
        """BART's post-LN: dropout, residual, LN, then fc1-act-fc2 with dropout, residual, LN."""
        hidden = attn_layer_norm(residual + F.dropout(attn_output, p=self.dropout, training=self.training))
        ffn = F.dropout(self.activation_fn(fc1(hidden)), p=self.activation_dropout, training=self.training)
        ffn = F.dropout(fc2(ffn), p=self.dropout, training=self.training)
        return final_layer_norm(hidden + ffn)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`(batch, seq_len, d)`, `(batch, M, d)`, mask `(batch, 1, M+S, M+S)` → new tokens, new memory, weights."""
        token_attn, memory_attn, attn_weights = self.self_attn(
            hidden_states, memory_states, attention_mask, output_attentions=output_attentions
        )
        hidden_states = self._residual_blocks(
            hidden_states, token_attn, self.self_attn_layer_norm, self.fc1, self.fc2, self.final_layer_norm
        )
        memory_states = self._residual_blocks(
            memory_states,
            memory_attn,
            self.mem_self_attn_layer_norm,
            self.mem_fc1,
            self.mem_fc2,
            self.mem_final_layer_norm,
        )
        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            clamp = torch.finfo(hidden_states.dtype).max - 1000  # as BART does for fp16 overflow
            hidden_states = hidden_states.clamp(-clamp, clamp)
        return hidden_states, memory_states, attn_weights


class MemBartUpdateGate(nn.Module):
    """`alpha = sigmoid(dense2(GELU(dense(memory))))`, dropout before each dense (the reference's `UpdateGate`)."""

    def __init__(self, embed_dim: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.dense2 = nn.Linear(embed_dim, 1)
        self.act_fn = nn.GELU()
        self.dropout = dropout

    def forward(self, memory_states: torch.Tensor) -> torch.Tensor:
        """`(batch, M, d)` → gate `(batch, M, 1)` in (0, 1)."""
        hidden = self.act_fn(self.dense(F.dropout(memory_states, p=self.dropout, training=self.training)))
        return torch.sigmoid(self.dense2(F.dropout(hidden, p=self.dropout, training=self.training)))


# ------------------------------------------------------------------------------------------------------------ models


class MemBartPreTrainedModel(BartPreTrainedModel):
    config_class = MemBartConfig
    config: MemBartConfig
    _no_split_modules = [r"MemBartEncoderLayer", r"BartDecoderLayer"]
    # the fused encoder attention is written against SDPA directly; the decoder uses whatever BART supports
    _supports_flex_attn = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MemBartEncoder):
            init.normal_(module.memory_bias, mean=0.0, std=self.config.init_std)


class MemBartEncoder(MemBartPreTrainedModel):
    """BART's encoder plus memory: embeddings (× embed_scale, learned positions with BART's offset of 2,
    `layernorm_embedding`, dropout), `encoder_layers` × [`MemBartEncoderLayer`], and the memory gate."""

    def __init__(self, config: MemBartConfig):
        super().__init__(config)
        embed_dim = config.d_model
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.memory_len = config.memory_len
        embed_scale = embed_dim**0.5 if config.scale_embedding else 1.0

        self.embed_tokens = BartScaledWordEmbedding(
            config.vocab_size, embed_dim, config.pad_token_id, embed_scale=embed_scale
        )
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings, embed_dim)
        self.layers = nn.ModuleList([MemBartEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(embed_dim)

        self.memory_layer_norm = nn.LayerNorm(embed_dim)
        self.memory_bias = nn.Parameter(torch.zeros(1, config.memory_len, embed_dim))
        self.memory_gate_net = MemBartUpdateGate(embed_dim, dropout=config.dropout)

        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def construct_memory(self, batch_size: int) -> torch.Tensor:
        """The initial memory: zeros `(batch_size, memory_len, d_model)` on the model's device and dtype."""
        return self.memory_bias.new_zeros(batch_size, self.memory_len, self.config.d_model)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        memory_states: torch.Tensor | None = None,
        memory_resets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
        **kwargs,
    ) -> MemBartEncoderOutput:
        """
        Args:
            input_ids: `(batch, seq_len)` token ids (or `inputs_embeds` `(batch, seq_len, d_model)`).
            memory_states: `(batch, memory_len, d_model)`; zeros ([`construct_memory`]) when None.
            memory_resets: `(batch,)` 0/1 (bool, int or float): 1 zeroes that lane's memory before it is read
                (a new document starts). Default: no reset.
            attention_mask: `(batch, seq_len)`, 0/False at padded tokens. Default: all visible.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("MemBartEncoder needs exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, seq_len = inputs_embeds.shape[:2]

        positions = self.embed_positions(inputs_embeds[:, :, -1]).to(inputs_embeds.device)
        hidden_states = self.layernorm_embedding(inputs_embeds + positions)
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)

        if memory_states is None:
            memory_states = self.construct_memory(batch)
        memory_states = memory_states.to(hidden_states.dtype)
        if memory_resets is None:
            keep = memory_states.new_ones(batch)
        else:
            keep = 1 - memory_resets.to(device=memory_states.device, dtype=memory_states.dtype)
        memory_states = self.memory_layer_norm(keep[:, None, None] * memory_states + self.memory_bias)
        old_memory_states = memory_states

        if attention_mask is None:
            token_mask = torch.ones(batch, seq_len, dtype=torch.bool, device=hidden_states.device)
        else:
            token_mask = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
        fused_mask = fused_attention_mask(token_mask, self.memory_len)

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue  # LayerDrop skips the whole layer, memory included
            hidden_states, memory_states, attn_weights = layer(
                hidden_states, memory_states, fused_mask, output_attentions=output_attentions
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        alpha = self.memory_gate_net(memory_states)
        memory_states = alpha * memory_states + (1 - alpha) * old_memory_states

        return MemBartEncoderOutput(
            last_hidden_state=torch.cat([memory_states, hidden_states], dim=1),
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            memory_states=memory_states,
            encoder_attention_mask=F.pad(token_mask, (self.memory_len, 0), value=True),
        )


def _cross_attention_mask(
    encoder_outputs: MemBartEncoderOutput, attention_mask: torch.Tensor | None, memory_len: int
) -> torch.Tensor | None:
    """The decoder's cross-attention mask over `[memory ; tokens]`: the encoder's own unless the caller passed one
    (token-level masks `(batch, seq_len)` get the always-visible memory prepended)."""
    encoder_len = encoder_outputs[0].shape[1]
    if attention_mask is None:
        return getattr(encoder_outputs, "encoder_attention_mask", None)
    if attention_mask.shape[-1] == encoder_len - memory_len:
        return F.pad(attention_mask.bool(), (memory_len, 0), value=True)
    if attention_mask.shape[-1] == encoder_len:
        return attention_mask.bool()
    raise ValueError(
        f"attention_mask has length {attention_mask.shape[-1]}; expected the token length {encoder_len - memory_len} "
        f"or memory_len + tokens = {encoder_len}."
    )


class MemBartModel(MemBartPreTrainedModel):
    _tied_weights_keys = {
        "decoder.embed_tokens.weight": "shared.weight",
        "encoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: MemBartConfig):
        super().__init__(config)
        embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.shared = BartScaledWordEmbedding(
            config.vocab_size, config.d_model, config.pad_token_id, embed_scale=embed_scale
        )
        self.encoder = MemBartEncoder(config)
        self.decoder = BartDecoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = value
        self.encoder.embed_tokens = self.shared
        self.decoder.embed_tokens = self.shared

    def get_encoder(self, *args, **kwargs):
        return self.encoder

    def construct_memory(self, batch_size: int) -> torch.Tensor:
        return self.encoder.construct_memory(batch_size)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        memory_states: torch.Tensor | None = None,
        memory_resets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: MemBartEncoderOutput | tuple | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MemBartSeq2SeqModelOutput:
        """Encoder (with memory) then BART's decoder. See [`MemBartEncoder.forward`] for the memory arguments."""
        if "past_key_values" in kwargs:  # the pre-v5 name of `cache`
            cache = kwargs.pop("past_key_values")
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass `decoder_input_ids` (or `decoder_inputs_embeds`), or `input_ids` to shift.")
            decoder_input_ids = shift_tokens_right(
                input_ids, self.config.pad_token_id, self.config.decoder_start_token_id
            )

        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                memory_states=memory_states,
                memory_resets=memory_resets,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif not isinstance(encoder_outputs, MemBartEncoderOutput):
            # a tuple or BaseModelOutput: the memory is the first memory_len rows of the encoder states
            states = encoder_outputs[0]
            encoder_outputs = MemBartEncoderOutput(
                last_hidden_state=states, memory_states=states[:, : self.config.memory_len]
            )
        cross_mask = _cross_attention_mask(encoder_outputs, attention_mask, self.config.memory_len)

        decoder_kwargs = {
            k: v
            for k, v in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states))
            if v is not None
        }
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=cross_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **decoder_kwargs,
            **kwargs,
        )
        return MemBartSeq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            memory_states=encoder_outputs.memory_states,
        )


class MemBartForConditionalGeneration(MemBartPreTrainedModel, GenerationMixin):
    """MemBART with BART's tied LM head and `final_logits_bias`.

    Segment by segment::

        memory = model.construct_memory(batch_size)
        for segment in segments:
            out = model(input_ids=segment, memory_states=memory, memory_resets=resets, labels=labels)
            memory = out.memory_states
    """

    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]

    def __init__(self, config: MemBartConfig):
        super().__init__(config)
        self.model = MemBartModel(config)
        self.final_logits_bias = nn.Buffer(torch.zeros((1, self.model.shared.num_embeddings)))
        self.lm_head = nn.Linear(config.d_model, self.model.shared.num_embeddings, bias=False)
        self.post_init()

    def get_encoder(self, *args, **kwargs):
        return self.model.encoder

    def construct_memory(self, batch_size: int) -> torch.Tensor:
        """Zeros `(batch_size, memory_len, d_model)`: the memory before a document's first segment."""
        return self.model.construct_memory(batch_size)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        memory_states: torch.Tensor | None = None,
        memory_resets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: MemBartEncoderOutput | tuple | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MemBartSeq2SeqLMOutput:
        """
        Args:
            labels: `(batch, target_len)` token ids, -100 where no loss is taken; when given (and no decoder inputs)
                the decoder is teacher-forced on `labels` shifted right.
        Returns:
            `loss` (mean token cross-entropy, when `labels` are given), `logits` `(batch, target_len, vocab)` and
            `memory_states` `(batch, memory_len, d_model)` to carry to the next segment.
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids,
            memory_states=memory_states,
            memory_resets=memory_resets,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state) + self.final_logits_bias.to(outputs.last_hidden_state.device)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.to(logits.device).view(-1))
        return MemBartSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            memory_states=outputs.memory_states,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @classmethod
    def from_bart(cls, bart, memory_len: int, **config_overrides) -> MemBartForConditionalGeneration:
        """Build a MemBART from a pretrained `BartForConditionalGeneration` (a model, or a path / hub name).

        Every BART weight is copied. Each memory twin (`mem_*` projections, layer norms and feed-forward) starts as
        a copy of its BART counterpart in the same layer, so at step 0 memory slots are processed like tokens;
        `memory_bias` is drawn from N(0, init_std); `memory_layer_norm` starts as the identity LN and the gate from
        the standard init (alpha ≈ 0.5: half old, half new memory).
        """
        from transformers import BartForConditionalGeneration

        if not isinstance(bart, BartForConditionalGeneration):
            bart = BartForConditionalGeneration.from_pretrained(bart)
        bart_fields = {k: v for k, v in bart.config.to_dict().items() if k not in ("model_type", "architectures")}
        config = MemBartConfig(**{**bart_fields, "memory_len": memory_len, **config_overrides})
        config.architectures = [cls.__name__]
        membart = cls(config).to(dtype=bart.dtype)

        bart_state = bart.state_dict()
        state = dict(bart_state)
        for layer in range(config.encoder_layers):
            prefix = f"model.encoder.layers.{layer}."
            for name in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "self_attn_layer_norm",
                "fc1",
                "fc2",
                "final_layer_norm",
            ):
                memory_name = name.replace("self_attn.", "self_attn.mem_") if "proj" in name else "mem_" + name
                for tensor in ("weight", "bias"):
                    state[f"{prefix}{memory_name}.{tensor}"] = bart_state[f"{prefix}{name}.{tensor}"].clone()
        own = membart.state_dict()
        missing = sorted(set(own) - set(state))
        expected_new = {k for k in missing if k.startswith("model.encoder.memory_")}
        if set(missing) != expected_new:
            raise RuntimeError(f"from_bart: BART weights missing for {sorted(set(missing) - expected_new)}")
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise RuntimeError(f"from_bart: BART weights with no MemBART counterpart: {unexpected}")
        membart.load_state_dict(state, strict=False)
        return membart


__all__ = [
    "MemBartEncoder",
    "MemBartEncoderOutput",
    "MemBartForConditionalGeneration",
    "MemBartModel",
    "MemBartPreTrainedModel",
    "MemBartSeq2SeqLMOutput",
    "MemBartSeq2SeqModelOutput",
    "fused_attention_mask",
]
