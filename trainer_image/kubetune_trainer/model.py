"""The embedding model: loading an encoder directory, pooling, LoRA, encoding and export.

The encoder is a Hugging Face `AutoModel` plus the pooling (and optional normalisation) that
the directory's sentence-transformers files describe (`modules.json`, `1_Pooling/config.json`,
`sentence_bert_config.json`); a plain Hugging Face directory gets mean pooling.

Training feeds the encoder *packed* texts (no padding). For BERT models, the architecture of
the small encoders this operator mostly tunes (all-MiniLM, bge, e5, ...), the forward runs
packed through the model's own modules, with a variable-length attention kernel on
CUDA: on short texts padding is most of a padded batch, so this is where the speed is. In
training it also keeps the residual stream in autocast's dtype and draws the hidden dropout's
masks as bits (`_hidden_norm`, `kubetune_trainer.dropout`). Other architectures are padded
back for their Hugging Face forward. Evaluation always runs the plain Hugging Face forward,
as sentence-transformers does.

LoRA adapters (peft) are *merged* into the weights on export. The checkpoint is then an
ordinary sentence-transformers directory: `SentenceTransformer(path)` loads it with no peft
and no base model to fetch, and inference costs exactly what the base model costs. The price
is size (a full copy of the weights instead of a few-MB adapter), which matters little for the
small encoders this operator tunes, and a promoted model must be self-contained anyway.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kubetune.contract import LoraSpec
from kubetune_trainer.dropout import dropout
from kubetune_trainer.errors import InputError

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max", "lasttoken", "mean_sqrt_len"]

_POOLING_KEYS: dict[str, Pooling] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"
_POOLING_TYPE = "sentence_transformers.models.Pooling"


@dataclass(frozen=True)
class Layout:
    """What a model directory says about how to turn token states into one embedding."""

    transformer_path: str
    pooling: Pooling
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool
    sentence_transformers: bool


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"base model: cannot read {path.name}: {error}") from None


def read_layout(model_dir: Path) -> Layout:
    """The layout of a sentence-transformers directory, or the default for a plain HF one."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        return Layout("", "mean", False, None, False, False)
    transformer_path = None
    pooling: Pooling | None = None
    normalize = False
    for module in _read_json(modules_file):
        kind, path = module.get("type", ""), module.get("path", "")
        if kind.endswith(".Transformer"):
            transformer_path = path
        elif kind.endswith(".Pooling"):
            settings = _read_json(model_dir / path / "config.json")
            modes = [mode for key, mode in _POOLING_KEYS.items() if settings.get(key)]
            if len(modes) != 1 or settings.get("pooling_mode_weightedmean_tokens"):
                raise InputError(
                    f"base model: unsupported pooling {settings}; need exactly one mode"
                )
            pooling = modes[0]
        elif kind.endswith(".Normalize"):
            normalize = True
        else:
            raise InputError(f"base model: unsupported sentence-transformers module {kind!r}")
    if transformer_path is None:
        raise InputError("base model: modules.json has no Transformer module")
    settings_file = model_dir / transformer_path / "sentence_bert_config.json"
    settings = _read_json(settings_file) if settings_file.exists() else {}
    return Layout(
        transformer_path=transformer_path,
        pooling=pooling or "mean",
        normalize=normalize,
        max_seq_length=settings.get("max_seq_length"),
        do_lower_case=bool(settings.get("do_lower_case", False)),
        sentence_transformers=True,
    )


def pool(states: Tensor, attention_mask: Tensor, mode: Pooling) -> Tensor:
    """One vector per sequence from token states [B, T, H] and a right-padded mask [B, T]."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(mask == 0, torch.finfo(states.dtype).min).amax(dim=1)
    if mode == "lasttoken":
        last = attention_mask.sum(dim=1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]
    summed = (states * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp_min(1e-9)
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def pool_packed(
    states: Tensor, sequence_index: Tensor, cu_seqlens: Tensor, mode: Pooling
) -> Tensor:
    """One vector per text from the token states [N, H] of packed texts (see `pool`)."""
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    if mode == "cls":
        return states[starts]
    if mode == "lasttoken":
        return states[ends - 1]
    rows = (starts.shape[0], states.shape[1])
    if mode == "max":
        empty = states.new_full(rows, torch.finfo(states.dtype).min)
        index = sequence_index.unsqueeze(1).expand_as(states)
        return empty.scatter_reduce(0, index, states, "amax")
    summed = states.new_zeros(rows, dtype=torch.float32).index_add(
        0, sequence_index, states.float()
    )
    counts = (ends - starts).unsqueeze(1).float()
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def _bert(transformer: nn.Module) -> nn.Module | None:
    """The BERT model inside `transformer` (unwrapping peft), if the packed path can run it."""
    get_base_model = getattr(transformer, "get_base_model", None)
    base = get_base_model() if callable(get_base_model) else transformer
    config = getattr(base, "config", None)
    if (
        getattr(config, "model_type", None) != "bert"
        or getattr(config, "is_decoder", False)
        or getattr(config, "position_embedding_type", "absolute") != "absolute"
    ):
        return None
    return base


def _attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """Attention of each packed text to itself: [N, heads, head_dim] in and out.

    On CUDA in bf16/fp16, the memory-efficient (CUTLASS) attention kernel over the packed
    tokens, with variable lengths; elsewhere the texts are scattered into a padded
    [texts, max_length] layout for SDPA and gathered back. On short texts (the Debian pairs'
    anchors hold about 12 tokens) the CUDA kernel wastes less than FlashAttention's
    variable-length kernel, which gives every text its own 128-row tiles: at the BERT-base
    shape one layer's attention, forward and backward, took 0.56 ms against 1.30, and a
    training step 37.0 ms against 40.5 (docs/benchmarks.md). Neither path applies dropout to
    the attention probabilities, and both must compute the same function. Hidden dropout
    stays. With BERT's attention dropout added back, one epoch on the Debian pairs came out
    about 0.001 nDCG@10 *worse*, full and LoRA, over three seeds (docs/benchmarks.md), so its
    absence costs no quality.
    """
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
        # the log-sum-exp is what the kernel's backward needs; skip it without gradients
        needs_grad = torch.is_grad_enabled() and any(
            tensor.requires_grad for tensor in (query, key, value)
        )
        out = torch.ops.aten._efficient_attention_forward(
            query.unsqueeze(0),
            key.unsqueeze(0),
            value.unsqueeze(0),
            None,
            cu_seqlens,
            cu_seqlens,
            max_length,
            max_length,
            0.0,
            0,
            needs_grad,
        )[0]
        return out.squeeze(0)
    texts, heads, head_dim = cu_seqlens.shape[0] - 1, query.shape[1], query.shape[2]
    slots = sequence_index * max_length + position_ids

    def padded(tensor: Tensor) -> Tensor:
        spread = tensor.new_zeros(texts * max_length, heads, head_dim).index_copy(0, slots, tensor)
        return spread.view(texts, max_length, heads, head_dim).transpose(1, 2)

    real = torch.zeros(texts * max_length, dtype=torch.bool, device=query.device)
    mask = real.index_fill(0, slots, True).view(texts, 1, 1, max_length)
    out = F.scaled_dot_product_attention(padded(query), padded(key), padded(value), mask)
    return out.transpose(1, 2).reshape(texts * max_length, heads, head_dim).index_select(0, slots)


def _stacked_qkv(attention: nn.Module, states: Tensor) -> Tensor | None:
    """A BERT self-attention's query, key and value of packed token states [N, H] as one
    [N, 3, heads, head_dim] tensor from one matrix product over the three stacked weights,
    where the projections are plain linear layers; None where peft wrapped them in LoRA
    layers, which then run one by one so that their adapters take part (`_project_qkv`).

    One product instead of three in the forward, and one for the input gradient instead of
    three products and their sum in the backward.
    """
    projections = (attention.query, attention.key, attention.value)
    if not all(type(linear) is nn.Linear and linear.bias is not None for linear in projections):
        return None
    weight = torch.cat([linear.weight for linear in projections])
    bias = torch.cat([linear.bias for linear in projections])
    shape = (states.shape[0], 3, attention.num_attention_heads, attention.attention_head_size)
    return F.linear(states, weight, bias).view(shape)


def _project_qkv(attention: nn.Module, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A BERT self-attention's query, key and value of packed token states [N, H]:
    [N, heads, head_dim] each, from one stacked product where it can (`_stacked_qkv`)."""
    stacked = _stacked_qkv(attention, states)
    if stacked is not None:
        return stacked[:, 0], stacked[:, 1], stacked[:, 2]
    shape = (states.shape[0], attention.num_attention_heads, attention.attention_head_size)
    query, key, value = (
        linear(states).view(shape) for linear in (attention.query, attention.key, attention.value)
    )
    return query, key, value


def _self_attention(
    attention: nn.Module,
    states: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """A BERT self-attention's context [N, heads, head_dim] for packed token states [N, H]."""
    query, key, value = _project_qkv(attention, states)
    return _attend(query, key, value, sequence_index, position_ids, cu_seqlens, max_length)


def _packed_bert_states(
    bert: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    sequence_index: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """BERT's last hidden states [N, H] for packed texts, through the model's own modules
    (so LoRA layers that peft injected into them take part)."""
    states = _packed_bert_embeddings(bert.embeddings, input_ids, position_ids)
    return _packed_bert_layers(
        bert.encoder.layer, states, position_ids, sequence_index, cu_seqlens, max_length
    )


def _packed_bert_embeddings(
    embeddings: nn.Module, input_ids: Tensor, position_ids: Tensor
) -> Tensor:
    states = embeddings.word_embeddings(input_ids) + embeddings.token_type_embeddings.weight[0]
    states = states + embeddings.position_embeddings(position_ids)
    return _hidden_dropout(embeddings.dropout, _hidden_norm(embeddings.LayerNorm, states))


def _hidden_norm(norm: nn.Module, states: Tensor) -> Tensor:
    """A hidden LayerNorm; in training under autocast it computes in float32, as autocast
    does, but returns autocast's dtype instead of float32.

    The LayerNorms' outputs are BERT's residual stream, and autocast leaves it float32: every
    dropout, residual sum and normalisation on it and on its gradient then moves twice the
    bytes that bf16 does, while the matrix products read it as bf16 anyway. Evaluation (eval
    mode) keeps Hugging Face's forward as it is.
    """
    device = states.device.type
    if not (norm.training and torch.is_autocast_enabled(device)):
        return norm(states)
    with torch.autocast(device, enabled=False):
        normed = F.layer_norm(
            states.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps
        )
    return normed.to(torch.get_autocast_dtype(device))


def _hidden_dropout(module: nn.Module, states: Tensor) -> Tensor:
    """What a hidden `nn.Dropout` does, with its keep mask in bits
    (`kubetune_trainer.dropout`)."""
    return dropout(states, module.p, module.training)


def _residual_block(block: nn.Module, hidden: Tensor, residual: Tensor) -> Tensor:
    """A BERT output block (attention output or feed-forward output): its projection,
    dropout, residual sum and LayerNorm."""
    projected = _hidden_dropout(block.dropout, block.dense(hidden))
    return _hidden_norm(block.LayerNorm, projected + residual)


def _packed_bert_layers(
    layers: Iterable[nn.Module],
    states: Tensor,
    position_ids: Tensor,
    sequence_index: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    tokens = states.shape[0]
    for layer in layers:
        context = _self_attention(
            layer.attention.self, states, sequence_index, position_ids, cu_seqlens, max_length
        )
        states = _residual_block(layer.attention.output, context.reshape(tokens, -1), states)
        states = _residual_block(layer.output, layer.intermediate(states), states)
    return states


class PackedStage(nn.Module):
    """A consecutive piece of the packed BERT forward (`Encoder.packed_stages`): the token
    embeddings if it is the first (then it takes token ids, else the previous stage's token
    states), some transformer layers, and the pooling if it is the last; otherwise the same
    arguments as `Encoder.forward`. It shares its modules with the encoder."""

    def __init__(
        self,
        bert: nn.Module,
        layers: list[nn.Module],
        first: bool,
        pooling: Pooling | None,
        normalize: bool,
    ) -> None:
        super().__init__()
        self.embeddings = bert.embeddings if first else None
        self.layers = nn.ModuleList(layers)
        self.pooling = pooling
        self.normalize = normalize

    def forward(
        self,
        inputs: Tensor,
        position_ids: Tensor,
        sequence_index: Tensor,
        cu_seqlens: Tensor,
        max_length: int,
    ) -> Tensor:
        states = inputs
        if self.embeddings is not None:
            states = _packed_bert_embeddings(self.embeddings, inputs, position_ids)
        states = _packed_bert_layers(
            self.layers, states, position_ids, sequence_index, cu_seqlens, max_length
        )
        if self.pooling is None:
            return states
        pooled = pool_packed(states, sequence_index, cu_seqlens, self.pooling)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def trainable(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.parameters() if parameter.requires_grad]


class Encoder(nn.Module):
    """Transformer + pooling (+ L2 normalisation if the model has it): texts' token ids in,
    one embedding per text out.

    `forward` takes packed texts (see `kubetune_trainer.batching.Packed`): BERT models run
    packed end to end, with no work spent on padding; other architectures are padded to
    `max_length` for the Hugging Face forward. `embed_padded` takes a right-padded batch and
    runs the Hugging Face forward unchanged (evaluation, which must match
    sentence-transformers' own encoding).
    """

    def __init__(self, transformer: nn.Module, pooling: Pooling, normalize: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling: Pooling = pooling
        self.normalize = normalize

    def _finish(self, embeddings: Tensor) -> Tensor:
        return F.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def embed_padded(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self._finish(pool(states, attention_mask, self.pooling))

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sequence_index: Tensor,
        cu_seqlens: Tensor,
        max_length: int,
    ) -> Tensor:
        bert = _bert(self.transformer)
        if bert is not None:
            states = _packed_bert_states(
                bert, input_ids, position_ids, sequence_index, cu_seqlens, max_length
            )
            return self._finish(pool_packed(states, sequence_index, cu_seqlens, self.pooling))
        texts = cu_seqlens.shape[0] - 1
        slots = sequence_index * max_length + position_ids
        padded = input_ids.new_zeros(texts * max_length).index_copy(0, slots, input_ids)
        mask = torch.zeros_like(padded).index_fill(0, slots, 1).view(texts, max_length)
        return self.embed_padded(padded.view(texts, max_length), mask)

    def packed_stages(self, first_layers: int | None = None) -> list[PackedStage] | None:
        """The packed forward cut in two, for BERT models (None for others): the first stage
        embeds the tokens and runs `first_layers` transformer layers (by default a sixth of
        them, at least one), the second runs the rest and pools.

        Compiled apart, each stage's backward is a graph of its own, so the gradients of the
        second stage's parameters are complete while the first stage's backward still runs:
        several processes can start averaging them then (`kubetune_trainer.sync`).
        """
        bert = _bert(self.transformer)
        if bert is None:
            return None
        layers = list(bert.encoder.layer)
        cut = max(1, len(layers) // 6) if first_layers is None else first_layers
        if not 0 < cut < len(layers):
            return None
        return [
            PackedStage(bert, layers[:cut], True, None, False),
            PackedStage(bert, layers[cut:], False, self.pooling, self.normalize),
        ]

    def freeze_unused(self) -> None:
        """Stop training parameters the packed forward never uses (BERT's pooler), so that
        every trainable parameter gets a gradient each step, as DDP requires."""
        bert = _bert(self.transformer)
        pooler = getattr(bert, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)


@dataclass
class EmbeddingModel:
    """An encoder with its tokenizer and the layout it was loaded from."""

    encoder: Encoder
    tokenizer: Any
    layout: Layout
    source_dir: Path

    @property
    def eval_max_seq_length(self) -> int:
        """The truncation a `SentenceTransformer` loading this model would use."""
        if self.layout.max_seq_length is not None:
            return self.layout.max_seq_length
        config = self.encoder.transformer.config
        limits = [
            value
            for value in (
                getattr(self.tokenizer, "model_max_length", None),
                getattr(config, "max_position_embeddings", None),
            )
            if isinstance(value, int) and 0 < value < 1_000_000
        ]
        return min(limits) if limits else 512

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids (with special tokens, truncated, unpadded) for each text."""
        if not texts:
            return []
        if self.layout.do_lower_case:
            texts = [text.lower() for text in texts]
        encoded = self.tokenizer(
            texts, truncation=True, max_length=max_length, add_special_tokens=True
        )
        return list(encoded["input_ids"])

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)


def load_model(model_dir: Path, display: str) -> EmbeddingModel:
    """Load the encoder in fp32 (autocast handles lower precision) on the CPU."""
    from transformers import AutoModel, AutoTokenizer

    layout = read_layout(model_dir)
    transformer_dir = model_dir / layout.transformer_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(transformer_dir)
        transformer = AutoModel.from_pretrained(transformer_dir, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"base model {display}: cannot load: {error}") from None
    encoder = Encoder(transformer, layout.pooling, layout.normalize)
    log.info(
        "loaded %s: %s, %.1fM parameters, %s pooling%s",
        display,
        type(transformer).__name__,
        sum(p.numel() for p in transformer.parameters()) / 1e6,
        layout.pooling,
        ", normalized" if layout.normalize else "",
    )
    return EmbeddingModel(encoder, tokenizer, layout, model_dir)


def apply_lora(model: EmbeddingModel, spec: LoraSpec) -> None:
    """Wrap the transformer in trainable LoRA adapters; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
    )
    try:
        model.encoder.transformer = get_peft_model(model.encoder.transformer, config)
    except ValueError as error:
        raise InputError(f"lora: {error}") from None
    trainable = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    log.info("LoRA r=%d alpha=%g: %.2fM trainable parameters", spec.r, spec.alpha, trainable / 1e6)


def _plain_transformer(encoder: Encoder) -> nn.Module:
    """The transformer with LoRA merged in (on a copy), ready for `save_pretrained`."""
    from peft import PeftModel

    transformer = encoder.transformer
    if isinstance(transformer, PeftModel):
        return copy.deepcopy(transformer).merge_and_unload()
    return transformer


def export(model: EmbeddingModel, out_dir: Path) -> None:
    """Write a sentence-transformers directory that `SentenceTransformer(out_dir)` loads.

    The sentence-transformers files of the source (modules.json, pooling, normalize,
    config_sentence_transformers.json, sentence_bert_config.json) are copied unchanged; a plain
    Hugging Face source gets generated ones describing the pooling used in training.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    layout, source = model.layout, model.source_dir
    transformer_out = out_dir / layout.transformer_path
    transformer_out.mkdir(parents=True, exist_ok=True)
    _plain_transformer(model.encoder).save_pretrained(transformer_out, safe_serialization=True)
    model.tokenizer.save_pretrained(transformer_out)
    if layout.sentence_transformers:
        for name in ("modules.json", "config_sentence_transformers.json"):
            if (source / name).exists():
                shutil.copy2(source / name, out_dir / name)
        settings = source / layout.transformer_path / "sentence_bert_config.json"
        if settings.exists():
            shutil.copy2(settings, transformer_out / settings.name)
        for module in _read_json(source / "modules.json"):
            path = module.get("path", "")
            if path and path != layout.transformer_path and (source / path).is_dir():
                shutil.copytree(source / path, out_dir / path, dirs_exist_ok=True)
        return
    dimension = int(model.encoder.transformer.config.hidden_size)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER_TYPE},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": _POOLING_TYPE},
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": model.eval_max_seq_length, "do_lower_case": False})
    )
    pooling = {"word_embedding_dimension": dimension} | {
        key: mode == layout.pooling for key, mode in _POOLING_KEYS.items()
    }
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
