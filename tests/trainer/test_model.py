"""The encoder against sentence-transformers, export of a plain Hugging Face model, batching,
and gradient caching's equivalence to a plain step (with the real small model)."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from kubetune.contract import LoraSpec, LossSpec
from kubetune_trainer import dropout as dropout_module
from kubetune_trainer import model as model_module
from kubetune_trainer.batching import (
    BatchSchedule,
    TokenizedExamples,
    graph_padding,
    graph_shape,
    pad,
)
from kubetune_trainer.data import Example
from kubetune_trainer.evaluation import encode
from kubetune_trainer.losses import build_loss
from kubetune_trainer.model import Encoder, apply_lora, export, load_model, pool, read_layout
from kubetune_trainer.step import cached_forward_backward, embed, forward_backward
from tests.trainer.tiny_bert import packed_texts, tiny_encoder

TEXTS = [
    "Real-time strategy game of ancient warfare",
    "command-line JSON processor",
    "A fast, lightweight and flexible web server with a very long description " * 8,
]
CPU = torch.device("cpu")


def test_layout_of_the_packaged_model(model_dir: Path) -> None:
    layout = read_layout(model_dir)
    assert (layout.pooling, layout.normalize, layout.max_seq_length) == ("mean", True, 256)
    assert layout.sentence_transformers


def test_pooling_modes_ignore_padding() -> None:
    states = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(states, mask, "mean").tolist() == [[2.0, 4.0]]
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(states, mask, "max").tolist() == [[3.0, 6.0]]
    assert pool(states, mask, "lasttoken").tolist() == [[3.0, 6.0]]


def test_embeddings_match_sentence_transformers(model_dir: Path) -> None:
    model = load_model(model_dir, str(model_dir))
    ours = encode(model, TEXTS, CPU, None, model.eval_max_seq_length)
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        TEXTS, convert_to_tensor=True, normalize_embeddings=True
    )
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def test_a_plain_hugging_face_model_exports_a_sentence_transformers_dir(
    model_dir: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copy2(model_dir / name, plain / name)
    model = load_model(plain, str(plain))
    assert (model.layout.pooling, model.layout.normalize) == ("mean", False)
    export(model, tmp_path / "exported")
    reloaded = SentenceTransformer(str(tmp_path / "exported"), device="cpu")
    reference = reloaded.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    ours = encode(model, TEXTS, CPU, None, model.eval_max_seq_length)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def test_pad_rounds_up_to_a_multiple_of_16() -> None:
    features = pad([[1, 2, 3], [4] * 17], pad_id=0)
    assert features.input_ids.shape == (2, 32)
    assert features.attention_mask.sum(dim=1).tolist() == [3, 17]
    assert features.input_ids[0, 3:].eq(0).all()


@pytest.mark.parametrize(
    ("counts", "max_length"),
    [
        ([(22_885, 512)], 128),
        ([(9_700, 202)], 256),
        ([(40, 3)], 8),
        ([(11_200, 256), (12_300, 256)], 128),
        ([(11_000, 240), (12_900, 272), (10_100, 256)], 128),
        ([(50, 16), (3, 2)], 2),
    ],
)
def test_graph_padding_gives_every_process_one_shape_with_short_dummies(
    counts: list[tuple[int, int]], max_length: int
) -> None:
    shape = graph_shape(counts, max_length)
    most = max(tokens for tokens, _ in counts)
    step = max(16, 1 << max(0, most.bit_length() - 6))
    assert shape[0] % step == 0 and shape[1] % 16 == 0
    for tokens, texts in counts:
        dummies = graph_padding(tokens, texts, shape)
        assert len(dummies) >= 1 and texts + len(dummies) == shape[1]
        assert tokens + int(dummies.sum()) == shape[0]
        assert dummies.min() >= 1 and dummies.max() <= max_length
    if len(counts) == 1:  # at most one step of padding, plus a token per dummy
        assert shape[0] - most < step + shape[1] - counts[0][1]


def test_collate_pads_every_process_to_the_same_shape(model_dir: Path) -> None:
    model = load_model(model_dir, str(model_dir))
    examples = [
        Example(
            f"query {i}", f"document number {i} " * (3 * i + 1), "a negative" if i % 3 else None
        )
        for i in range(9)
    ]
    data = TokenizedExamples(examples, model, max_length=16)
    order = [8, 0, 3, 1, 2, 7, 5, 4, 6]
    shares = [data.collate(order, rank, 3, graph_shapes=True) for rank in range(3)]
    plain = [data.collate(order, rank, 3) for rank in range(3)]
    shapes = {(len(share.texts.input_ids), len(share.texts.offsets) - 1) for share in shares}
    assert len(shapes) == 1
    for padded, unpadded in zip(shares, plain, strict=True):
        assert len(padded.texts) == len(unpadded.texts) and padded.texts.dummies >= 1
        assert padded.texts.tokens == unpadded.texts.tokens
        real = padded.texts.input_ids[: padded.texts.tokens]
        assert real.tolist() == unpadded.texts.input_ids.tolist()


def test_batch_schedule_is_a_seeded_permutation_per_epoch() -> None:
    schedule = BatchSchedule(size=10, batch_size=4, seed=1)
    assert schedule.steps_per_epoch == 3
    epoch = [i for step in range(3) for i in schedule.indices(step)]
    assert sorted(epoch) == list(range(10))
    assert epoch != [i for step in range(3, 6) for i in schedule.indices(step)]
    again = BatchSchedule(size=10, batch_size=4, seed=1)
    assert [again.indices(step) for step in (4, 0)] == [schedule.indices(4), schedule.indices(0)]
    assert BatchSchedule(size=10, batch_size=4, seed=2).indices(0) != schedule.indices(0)


def test_gradient_cache_gives_the_full_batch_gradient(model_dir: Path) -> None:
    model = load_model(model_dir, str(model_dir))
    examples = [
        Example(f"query {i} about {topic}", f"a document on {topic} number {i}", negative)
        for i, (topic, negative) in enumerate(
            [
                ("games", "a web server"),
                ("json", None),
                ("fonts", "a database"),
                ("audio", None),
                ("mail", "x"),
            ]
        )
    ]
    batch = TokenizedExamples(examples, model, max_length=32).collate(list(range(5)))
    loss_fn = build_loss("mnrl", LossSpec())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model.encoder.eval()  # no dropout, so both paths see the same function

    def gradients(run: object) -> tuple[float, dict[str, torch.Tensor]]:
        model.encoder.zero_grad(set_to_none=True)
        loss = run()  # type: ignore[operator]
        grads = {
            n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None
        }
        return float(loss), grads

    plain_loss, plain = gradients(
        lambda: forward_backward(model.encoder, batch, loss_fn, None, scaler, 32)
    )
    cached_loss, cached = gradients(
        lambda: cached_forward_backward(
            model.encoder, batch, loss_fn, None, scaler, 32, mini_batch_size=2
        )
    )
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain.keys() == cached.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_packed_forward_matches_the_padded_hugging_face_forward(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed BERT path (training) computes what sentence-transformers' padded forward
    does (evaluation), for every pooling mode, and so does the padded fallback that other
    architectures take."""
    model = load_model(model_dir, str(model_dir))
    model.encoder.eval()
    examples = [Example(text, TEXTS[(i + 1) % 3]) for i, text in enumerate(TEXTS)]
    batch = TokenizedExamples(examples, model, max_length=64).collate([0, 1, 2])
    texts = [example.anchor for example in examples] + [example.positive for example in examples]
    padded = pad(model.tokenize(texts, 64), model.pad_token_id)
    encoder = model.encoder
    with torch.no_grad():
        for mode in ("mean", "cls", "max", "lasttoken", "mean_sqrt_len"):
            encoder.pooling = mode
            reference = encoder.embed_padded(padded.input_ids, padded.attention_mask)
            packed = embed(encoder, batch.texts, 64)
            torch.testing.assert_close(packed, reference, atol=2e-5, rtol=1e-4, msg=mode)
        monkeypatch.setattr(model_module, "_bert", lambda transformer: None)
        fallback = embed(encoder, batch.texts, 64)
        torch.testing.assert_close(fallback, reference, atol=2e-5, rtol=1e-4)


def test_qkv_projections_run_stacked_with_the_same_values_and_gradients(
    model_dir: Path,
) -> None:
    """Plain query, key and value projections run as one stacked matrix product: the same
    outputs and weight gradients as the three layers; LoRA-wrapped ones run as they are."""
    model = load_model(model_dir, str(model_dir))
    attention = model.encoder.transformer.encoder.layer[0].attention.self
    states = torch.randn(7, attention.query.in_features)
    shape = (7, attention.num_attention_heads, attention.attention_head_size)
    projections = (attention.query, attention.key, attention.value)

    def weight_gradients(outputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        attention.zero_grad(set_to_none=True)
        sum((output * index).sum() for index, output in enumerate(outputs, start=1)).backward()
        return [p.grad.clone() for linear in projections for p in (linear.weight, linear.bias)]

    stacked = model_module._project_qkv(attention, states)
    separate = tuple(linear(states).view(shape) for linear in projections)
    for got, expected in zip(stacked, separate, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for got, expected in zip(weight_gradients(stacked), weight_gradients(separate), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    apply_lora(model, LoraSpec(target_modules=["query", "value"]))
    attention = model.encoder.transformer.get_base_model().encoder.layer[0].attention.self
    with torch.no_grad():  # non-zero adapters, so that their part shows in the outputs
        for name, parameter in attention.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    attention.eval()
    assert model_module._stacked_qkv(attention, states) is None
    with torch.no_grad():
        adapted = model_module._project_qkv(attention, states)
        wrapped = (attention.query, attention.key, attention.value)
        for got, linear in zip(adapted, wrapped, strict=True):
            torch.testing.assert_close(got, linear(states).view(shape))
        assert not torch.allclose(adapted[0], separate[0].detach(), atol=1e-3)


def test_collate_packs_each_process_share_of_the_batch(model_dir: Path) -> None:
    model = load_model(model_dir, str(model_dir))
    examples = [
        Example(f"query {i}", f"document number {i} " * (i + 1), "a negative" if i % 2 else None)
        for i in range(5)
    ]
    data = TokenizedExamples(examples, model, max_length=16)
    whole = data.collate([4, 0, 3, 1, 2])
    assert (whole.examples, whole.negatives, whole.shares) == (5, 2, (5,))
    lengths = [b - a for a, b in pairwise(whole.texts.offsets)]
    order = (4, 0, 3, 1, 2)
    texts = [examples[i].anchor for i in order] + [examples[i].positive for i in order]
    expected = model.tokenize([*texts, "a negative", "a negative"], 16)
    assert lengths == [len(ids) for ids in expected]
    assert whole.negative_owner is not None and whole.negative_owner.tolist() == [2, 3]
    assert whole.texts.position_ids[: lengths[0]].tolist() == list(range(lengths[0]))
    second = data.collate([4, 0, 3, 1, 2], rank=1, world_size=2)
    assert (second.shares, second.negative_shares, second.examples) == ((3, 2), (1, 1), 2)
    assert len(second.texts) == 2 * 2 + 1  # its own texts ...
    assert second.negative_owner is not None and second.negative_owner.tolist() == [2, 3]
    assert second.group.tolist() == whole.group.tolist()  # ... and the whole step's rest
    assert second.weight.tolist() == whole.weight.tolist()
    piece = whole.texts.rows(5, 7)
    assert piece.offsets == (0, lengths[5], lengths[5] + lengths[6])
    assert piece.sequence_index.tolist() == [0] * lengths[5] + [1] * lengths[6]
    assert (
        piece.input_ids.tolist()
        == whole.texts.input_ids[whole.texts.offsets[5] : whole.texts.offsets[7]].tolist()
    )


def hidden_dropouts_off(encoder: Encoder) -> None:
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def test_in_training_the_residual_stream_is_bf16_under_autocast_and_float32_without() -> None:
    """Training mode with dropout off: without autocast the packed path computes exactly what
    it does in eval mode; under autocast its hidden LayerNorms return bf16 (computed in
    float32), and the embeddings stay within bf16's error of the float32 forward."""
    texts = packed_texts()
    reference, training = tiny_encoder(), tiny_encoder()
    hidden_dropouts_off(training)
    reference.eval()
    training.train()
    with torch.no_grad():
        expected = embed(reference, texts, 64)
        assert torch.equal(embed(training, texts, 64), expected)
    norm = training.transformer.embeddings.LayerNorm
    states = torch.randn(7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model_module._hidden_norm(norm, states).dtype == torch.bfloat16
        embeddings = embed(training, texts, 64)
        norm.eval()
        assert model_module._hidden_norm(norm, states).dtype == torch.float32
    torch.testing.assert_close(
        model_module._hidden_norm(norm, states),
        F.layer_norm(states, (32,), norm.weight, norm.bias, norm.eps),
    )
    error = (embeddings.float() - expected).norm() / expected.norm()
    assert 0 < error < 2e-2


def test_the_packed_hidden_dropout_draws_its_masks_from_the_keep_bit_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training mode: the hidden dropouts draw other masks than PyTorch's dropout from the
    same seed (so the keep-bit kernel is what ran), move the embeddings from the
    dropout-free ones about as much, and the seed replays them."""
    texts = packed_texts()
    encoder = tiny_encoder()
    with torch.no_grad():
        encoder.eval()
        still = embed(encoder, texts, 64)
        encoder.train()
        torch.manual_seed(1)
        with_torch = embed(encoder, texts, 64)
        # Triton's interpreter runs the kernel on CPU (tests/conftest.py)
        monkeypatch.setattr(dropout_module, "KERNEL_DEVICES", {"cuda", "cpu"})
        torch.manual_seed(1)
        with_bits = embed(encoder, texts, 64)
        torch.manual_seed(1)
        again = embed(encoder, texts, 64)
    assert torch.equal(with_bits, again)
    assert not torch.allclose(with_bits, with_torch)
    moved = [(x - still).norm() / still.norm() for x in (with_bits, with_torch)]
    assert 0.3 < moved[0] / moved[1] < 3
