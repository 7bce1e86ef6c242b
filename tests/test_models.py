"""Models: shapes, masks, incremental decoding = teacher forcing, save/load, bf16, and that the whole path learns."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import safetensors
import torch
from PIL import Image

from texlens.decoding import greedy_decode
from texlens.latex import Vocab, normalize
from texlens.models import (
    MODELS,
    Encoder,
    EncoderConfig,
    build_model,
    count_parameters,
    load_model,
    model_config,
    rebuild,
    save_model,
)

NAMES = sorted(MODELS)
VOCAB_SIZE = 30


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny ops on 2 shared cores run faster single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, VOCAB_SIZE, preset="tiny", **overrides).eval()


def batch(b: int = 2, t: int = 9, h: int = 32, w: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(b, 1, h, w, generator=g) > 0.8).float()
    tgt = torch.randint(5, VOCAB_SIZE, (b, t), generator=g)
    tgt[:, 0] = 1
    return images, tgt


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name):
    model = tiny(name)
    images, tgt = batch()
    memory = model.encode(images)
    h, w = model.feature_shape(32, 128)
    assert (h, w) == (2, 16)  # stride 16 x 8
    assert memory.shape == (2, h * w, model.config.d_model)
    assert model(images, tgt).shape == (2, 9, VOCAB_SIZE)
    assert model.decode_embeddings_only(tgt).shape == (2, 9, VOCAB_SIZE)


def test_default_sizes():
    for name in NAMES:
        n = count_parameters(build_model(name, 500))
        # Sized for CPU training: a few million parameters, most of them in the decoder.
        assert 3e6 < n < 9e6, (name, n)
    assert build_model("resnet-transformer", 500).encoder.config.total_stride == (16, 8)


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    """Changing a later target token does not change earlier logits (also without an image)."""
    model = tiny(name)
    images, tgt = batch()
    changed = tgt.clone()
    changed[:, 5] = (tgt[:, 5] + 1 - 5) % (VOCAB_SIZE - 5) + 5
    a, b = model(images, tgt), model(images, changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    a, b = model.decode_embeddings_only(tgt), model.decode_embeddings_only(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_padding_is_harmless(name):
    """Pad positions after a target's end neither break anything nor change the real positions' logits."""
    model = tiny(name)
    images, tgt = batch()
    padded = tgt.clone()
    padded[0, 6:] = 0
    out = model(images, padded)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, :6], model(images[:1], tgt[:1, :6])[0], atol=1e-5)
    assert torch.isfinite(model.decode_embeddings_only(torch.zeros(2, 4, dtype=torch.long))).all()


@pytest.mark.parametrize("name", NAMES)
def test_step_equals_forward(name):
    """Incremental decoding with the cache gives the teacher-forced logits; attention rows sum to 1."""
    model = tiny(name)
    images, tgt = batch()
    full = model(images, tgt)
    state = model.init_state(model.encode(images))
    steps = []
    for i in range(tgt.shape[1]):
        logits, state, att = model.step(tgt[:, i], state)
        steps.append(logits)
        assert att.shape == (2, 32)
        assert torch.allclose(att.sum(-1), torch.ones(2), atol=1e-5)
        assert (att >= 0).all()
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-4)
    if name == "resnet-transformer":
        assert state["self_k"][0].shape[2] == tgt.shape[1]  # one cached key per fed token


@pytest.mark.parametrize("name", NAMES)
def test_reorder_state(name):
    model = tiny(name)
    images, tgt = batch()
    state = model.init_state(model.encode(images))
    _, state, _ = model.step(tgt[:, 0], state)
    swapped = model.reorder_state(state, torch.tensor([1, 0]), images=torch.tensor([1, 0]))
    a, _, _ = model.step(tgt[:, 1], state)
    b, _, _ = model.step(tgt[:, 1].flip(0), swapped)
    assert torch.allclose(a.flip(0), b, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_hypotheses_share_their_image_state(name):
    """g rows per image against one copy of its memory step exactly like g copies of the memory (beam search)."""
    model = tiny(name)
    images, tgt = batch(b=2)
    memory = model.encode(images)
    rows = torch.arange(2).repeat_interleave(3)
    shared = model.reorder_state(model.init_state(memory), rows)
    copied = model.init_state(memory.repeat_interleave(3, 0))
    for key in model.static_state:  # one row per image, not per hypothesis
        leaves = shared[key] if isinstance(shared[key], list) else [shared[key]]
        assert all(leaf.shape[0] == 2 for leaf in leaves)
    g = torch.Generator().manual_seed(4)
    for step in range(6):
        if step == 3:  # beams trade places and the first image finishes: its rows and its memory go
            shared = model.reorder_state(shared, torch.tensor([5, 3, 3]), images=torch.tensor([1]))
            copied = model.reorder_state(copied, torch.tensor([5, 3, 3]), images=torch.tensor([5, 3, 3]))
        tokens = torch.randint(5, VOCAB_SIZE, (6 if step < 3 else 3,), generator=g)
        a, shared, att_a = model.step(tokens, shared)
        b, copied, att_b = model.step(tokens, copied)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(att_a, att_b, atol=1e-6, rtol=1e-5)


def test_scheduled_sampling():
    """teacher_forcing=1 is teacher forcing; 0 feeds back the argmax, exactly like stepwise greedy decoding."""
    model = tiny("cnn-rnn")
    images, tgt = batch()
    tgt[1, 6:] = 0
    assert torch.allclose(model(images, tgt, teacher_forcing=1.0), model(images, tgt), atol=1e-6)
    free = model(images, tgt, teacher_forcing=0.0)
    state = model.init_state(model.encode(images))
    tokens, steps = tgt[:, 0], []
    for _ in range(tgt.shape[1]):
        logits, state, _ = model.step(tokens, state)
        steps.append(logits)
        tokens = logits.argmax(-1)
    assert torch.allclose(free, torch.stack(steps, 1), atol=1e-5)
    mixed = model.train()(images, tgt, teacher_forcing=0.5)
    assert mixed.shape == free.shape and torch.isfinite(mixed).all()
    mixed.logsumexp(-1).mean().backward()


@pytest.mark.parametrize("attention", ["none", "se", "cbam", "eca"])
def test_encoder_attention(attention):
    config = EncoderConfig(widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1), d_model=24, attention=attention)
    encoder = Encoder(config)
    out = encoder(torch.rand(2, 1, 64, 256))
    assert out.shape == (2, 24, *encoder.feature_shape(64, 256)) == (2, 24, 4, 32)
    with pytest.raises(ValueError):
        EncoderConfig(attention="bogus")


@pytest.mark.parametrize("name", NAMES)
def test_bf16_channels_last(name):
    model = tiny(name, encoder={"attention": "cbam"}).train().to(memory_format=torch.channels_last)
    images, tgt = batch()
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images, tgt)
    assert logits.shape == (2, 9, VOCAB_SIZE) and torch.isfinite(logits.float()).all()
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_roundtrip(name, tmp_path):
    model = tiny(name)
    vocab = Vocab([f"t{i}" for i in range(VOCAB_SIZE - 5)])
    save_model(model, vocab, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["name"] == name and config["vocab_size"] == VOCAB_SIZE
    with safetensors.safe_open(tmp_path / "model.safetensors", "pt") as f:  # a real safetensors file
        assert len(list(f.keys())) > 10
    loaded, loaded_vocab = load_model(tmp_path)
    assert loaded_vocab.itos == vocab.itos
    assert model_config(loaded) == model_config(model)
    images, tgt = batch()
    assert torch.equal(loaded(images, tgt), model(images, tgt))
    if name == "resnet-transformer":  # tied weights stay tied
        assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_saved_weights_are_readable_by_whoever_can_read_the_config(tmp_path):
    old = os.umask(0o022)  # the usual umask: new files 0644 (safetensors alone writes 0600)
    try:
        save_model(tiny("resnet-transformer"), Vocab([f"t{i}" for i in range(VOCAB_SIZE - 5)]), tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "vocab.json": 0o644}


def test_build_model_overrides():
    model = build_model("resnet-transformer", 40, preset="tiny", n_layers=2, encoder={"attention": "se"})
    assert len(model.layers) == 2 and model.encoder.config.attention == "se"
    rebuilt = build_model(**model_config(model))
    assert model_config(rebuilt) == model_config(model)
    with pytest.raises(ValueError):
        build_model("nope", 40)
    with pytest.raises(ValueError):
        build_model("cnn-rnn", 40, not_a_field=1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("atrous", "density"),
    [
        ((False, False, True, False), (2, 1)),
        ((False, True, True, False), (4, 2)),
        ((False, "height", True, False), (4, 1)),  # stride 4 x 8: finer rows only
        (("width", False, False, False), (1, 2)),
    ],
)
def test_atrous_stages_refine_the_map_of_the_strided_weights(name, atrous, density):
    """An a trous model computes, on every other feature row (column), exactly what its strided original did."""
    strided = tiny(name)
    dense = rebuild(strided, encoder={"atrous": atrous}).eval()
    (dh, dw) = dense.encoder.config.density
    assert (dh, dw) == density
    sh, sw = strided.encoder.config.total_stride
    assert dense.encoder.config.total_stride == (sh // dh, sw // dw)
    images, tgt = batch(h=64, w=256)
    with torch.no_grad():
        coarse, fine = strided.encoder(images), dense.encoder(images)
        assert fine.shape[-2:] == dense.feature_shape(64, 256) == (64 // (sh // dh), 256 // (sw // dw))
        assert torch.allclose(fine[:, :, ::dh, ::dw], coarse, atol=1e-5)
        # the 2-D positions count the strided model's rows: its memory is a subset of the dense one's
        memory = dense.encode(images).view(2, *fine.shape[-2:], -1)
        assert torch.allclose(memory[:, ::dh, ::dw].flatten(1, 2), strided.encode(images), atol=1e-5)
        assert dense(images, tgt).shape == strided(images, tgt).shape
    # the weights are the same tensors' values; a change of shape is refused
    assert all(torch.equal(v, strided.state_dict()[k]) for k, v in dense.state_dict().items())
    with pytest.raises(ValueError, match="changes the model's weights"):
        rebuild(strided, d_model=48)
    with pytest.raises(ValueError, match="one entry per stage"):
        rebuild(strided, encoder={"atrous": [True]})
    with pytest.raises(ValueError, match="an atrous entry is"):
        rebuild(strided, encoder={"atrous": [False, "rows", True, False]})


@pytest.mark.parametrize("name", NAMES)
def test_a_deeper_model_starts_where_its_original_was(name):
    """Blocks appended to encoder stages (and decoder layers) start as identities: same outputs, then they learn."""
    original = tiny(name).eval()
    blocks = [b + (1 if s in (1, 3) else 0) for s, b in enumerate(original.config.encoder.blocks)]
    grow = {"encoder": {"blocks": blocks}}
    if name == "resnet-transformer":
        grow["n_layers"] = original.config.n_layers + 2
    deeper = rebuild(original, **grow).eval()
    assert list(deeper.config.encoder.blocks) == blocks
    assert count_parameters(deeper) > count_parameters(original)
    images, tgt = batch(h=64, w=256)
    with torch.no_grad():
        assert torch.allclose(deeper.encoder(images), original.encoder(images), atol=1e-6)
        assert torch.allclose(deeper(images, tgt), original(images, tgt), atol=1e-5)
    # every weight the original had carries over unchanged
    state = original.state_dict()
    assert all(torch.equal(deeper.state_dict()[k], v) for k, v in state.items())
    # the new blocks learn: their zeroed scales get gradients at once
    deeper.train()
    loss = deeper(images, tgt).float().logsumexp(-1).mean()
    loss.backward()
    new_scale = deeper.encoder.stages[1][-1].bn2.weight
    assert new_scale.grad is not None and new_scale.grad.abs().sum() > 0
    # growing is the only change of shape allowed: fewer blocks, or wider ones, are refused
    with pytest.raises(ValueError, match="changes the model's weights"):
        rebuild(deeper, encoder={"blocks": list(original.config.encoder.blocks)})
    with pytest.raises(ValueError, match="changes the model's weights"):
        rebuild(original, encoder={"widths": [w * 2 for w in original.config.encoder.widths]})


def _real_pairs(shared_data, n: int = 4) -> tuple[torch.Tensor, list[list[str]]]:
    """n short formulas of the im2markup sample with their images: grey -> ink 1, fit into 32x128."""
    root = shared_data / "im2markup_sample"
    formulas = (root / "formulas.lst").read_text(encoding="utf-8", errors="replace").split("\n")
    pairs = []
    for line in (root / "train.lst").read_text().split("\n"):
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            tokens = normalize(formulas[int(parts[0])]).split()
        except Exception:
            continue
        path = root / "images" / f"{parts[1]}.png"
        if 4 <= len(tokens) <= 14 and r"\label" not in tokens and path.exists():  # \label draws nothing
            pairs.append((path, tokens))
        if len(pairs) == n:
            break
    images = []
    for path, _ in pairs:
        rgba = Image.open(path).convert("RGBA")
        white = Image.new("RGBA", rgba.size, "white")
        img = np.asarray(Image.alpha_composite(white, rgba).convert("L"), dtype=np.float32) / 255.0
        ys, xs = np.nonzero(img < 0.5)
        img = 1.0 - img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        scale = min(28 / img.shape[0], 124 / img.shape[1])
        size = (max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale)))
        small = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize(size), dtype=np.float32) / 255
        canvas = np.zeros((32, 128), dtype=np.float32)
        canvas[2 : 2 + small.shape[0], 2 : 2 + small.shape[1]] = small
        images.append(torch.from_numpy(canvas)[None])
    return torch.stack(images), [t for _, t in pairs]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_overfits_four_real_samples(name, shared_data):
    """A tiny model learns 4 real (image, formula) pairs in < 200 steps and greedy decoding reproduces them."""
    images, token_lists = _real_pairs(shared_data)
    assert len(token_lists) == 4
    vocab = Vocab.build(token_lists)
    encoded = [vocab.encode(t) for t in token_lists]
    t = max(map(len, encoded))
    seqs = torch.tensor([ids + [vocab.pad_id] * (t - len(ids)) for ids in encoded])
    torch.manual_seed(0)
    model = build_model(name, len(vocab), preset="tiny", d_model=64, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    decoded: list[list[str]] = []
    for step in range(1, 200):
        model.train()
        logits = model(images, seqs[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), seqs[:, 1:].flatten(), ignore_index=vocab.pad_id
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 and loss.item() < 0.3:
            hyps = greedy_decode(model.eval(), images, max_len=t + 4, vocab=vocab)
            decoded = [vocab.decode(h.ids) for h in hyps]
            if decoded == token_lists:
                break
    assert decoded == token_lists, f"loss {loss.item():.3f} after {step} steps"
