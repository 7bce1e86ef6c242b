"""Dataset, bucketing, mixing and collate."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from texlens.data.dataset import BucketBatchSampler, FormulaDataset, collate, image_size, mix_indices
from texlens.latex import Vocab

START, END, PAD = Vocab.start_id, Vocab.end_id, Vocab.pad_id


def test_collate_pads_labels_to_the_batch_not_the_dataset():
    img_a = np.ones((20, 30), dtype=np.float32)
    img_b = np.full((40, 17), 0.5, dtype=np.float32)
    long_label = np.array([START, *range(5, 45), END])  # in the "dataset", not in this batch
    batch = [(img_a, np.array([START, 7, 8, END])), (img_b, np.array([START, 9, 10, 11, 12, END]))]
    out = collate(batch)
    assert out.tgt_in.shape == (2, 5) and out.tgt_out.shape == (2, 5)  # 4 tokens + 1, not len(long_label)
    assert out.tgt_in[0].tolist() == [START, 7, 8, PAD, PAD]
    assert out.tgt_out[0].tolist() == [7, 8, END, PAD, PAD]
    assert out.tgt_in[1].tolist() == [START, 9, 10, 11, 12]
    assert out.tgt_out[1].tolist() == [9, 10, 11, 12, END]
    # images: padded to the batch maximum rounded up to a multiple of 16, content top-left, padding = 0
    assert out.images.shape == (2, 1, 48, 32)
    assert out.images[0, 0, :20, :30].min() == 1 and out.images[0, 0, 20:].max() == 0
    assert out.images[1, 0, :40, :17].eq(0.5).all() and out.images[1, 0, :, 17:].max() == 0
    assert collate([(img_a, long_label)]).tgt_in.shape == (1, len(long_label) - 1)


def _two_size_clusters(n: int = 200, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    small = [(int(rng.integers(28, 40)), int(rng.integers(60, 200))) for _ in range(n // 2)]
    large = [(int(rng.integers(90, 130)), int(rng.integers(400, 900))) for _ in range(n - n // 2)]
    sizes = small + large
    order = rng.permutation(n)
    return [sizes[i] for i in order]


def test_bucketing_groups_similar_sizes_and_covers_every_sample():
    sizes = _two_size_clusters()
    sampler = BucketBatchSampler(sizes, batch_size=10, seed=1)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(sizes)))  # each sample once per epoch
    mixed = [b for b in batches if len({sizes[i][0] >= 60 for i in b}) > 1]
    assert len(mixed) <= 1  # at most the one batch at the cluster boundary mixes small and large images

    # padding waste within batches is far below that of random batches
    def waste(bs):
        total = 0.0
        for b in bs:
            h = max(sizes[i][0] for i in b)
            w = max(sizes[i][1] for i in b)
            total += sum(1 - sizes[i][0] * sizes[i][1] / (h * w) for i in b)
        return total / len(sizes)

    random_batches = np.array_split(np.random.default_rng(0).permutation(len(sizes)), len(batches))
    assert waste(batches) < 0.5 * waste(random_batches)


def test_bucketing_reshuffles_each_epoch_and_is_reproducible():
    sizes = _two_size_clusters()
    sampler = BucketBatchSampler(sizes, batch_size=10, seed=3)
    first, second = list(sampler), list(sampler)  # iteration advances the epoch
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(BucketBatchSampler(sizes, batch_size=10, seed=3)) == first


def test_bucketing_by_pixels_and_across_ranks():
    sizes = _two_size_clusters()
    budget = 64 * 1024 * 4
    sampler = BucketBatchSampler(sizes, batch_size=64, max_pixels=budget, seed=0)
    batches = list(sampler)
    for b in batches:
        h = max(-(-sizes[i][0] // 16) * 16 for i in b)
        w = max(-(-sizes[i][1] // 16) * 16 for i in b)
        assert len(b) == 1 or len(b) * h * w <= budget
    counts = [len(b) for b in batches]
    assert max(counts) > 2 * min(counts)  # small images travel in bigger batches
    ranks = [list(BucketBatchSampler(sizes, 10, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    seen0 = {i for b in ranks[0] for i in b}
    seen1 = {i for b in ranks[1] for i in b}
    assert not seen0 & seen1


def test_mix_indices_balances_datasets_by_weight():
    rng = np.random.default_rng(0)
    idx = mix_indices([10, 1000], [1.0, 1.0], epoch_size=400, rng=rng)
    assert len(idx) == 400
    small = idx[idx < 10]
    assert len(small) == 200
    assert np.bincount(small, minlength=10).tolist() == [20] * 10  # the small set is repeated evenly
    large = idx[idx >= 10]
    assert len(large) == 200 and len(set(large.tolist())) == 200  # the large set is subsampled
    idx = mix_indices([100, 100], [3.0, 1.0], epoch_size=200, rng=rng)
    assert (idx < 100).sum() == 150
    with pytest.raises(ValueError):
        mix_indices([1, 2], [0.0, 0.0], 10, rng)
    mixed = BucketBatchSampler([(32, 64)] * 110, 8, lengths=[10, 100], weights=[1, 1], epoch_size=40, seed=0)
    flat = [i for b in mixed for i in b]
    assert sum(i < 10 for i in flat) == 20


def test_image_size_reads_the_header(shared_data, tmp_path):
    path = next((shared_data / "crohme" / "train_2014").glob("*.png"))
    with Image.open(path) as im:
        assert image_size(path) == (im.height, im.width)
    jpg = tmp_path / "x.jpg"
    Image.new("L", (33, 21), 255).save(jpg)
    assert image_size(jpg) == (21, 33)


@pytest.fixture(scope="module")
def crohme_samples(shared_data):
    from texlens.data.formats import read_dataset

    samples, _ = read_dataset(shared_data / "crohme" / "train_caption.txt")
    return samples[:40]


def test_formula_dataset_on_real_handwriting(crohme_samples):
    from texlens.image import PreprocessConfig

    vocab = Vocab.build(s.latex for s in crohme_samples)
    ds = FormulaDataset(crohme_samples, vocab, PreprocessConfig(), max_tokens=20)
    assert ds.dropped == sum(len(s.latex.split()) > 20 for s in crohme_samples) > 0
    image, ids = ds[0]
    assert image.dtype == np.float32 and image.ndim == 2
    assert 0.0 <= image.min() and image.max() <= 1.0
    # CROHME is white ink on black; after preprocessing ink = 1 on a 0 background
    assert image[0].max() == 0 and (image > 0.5).mean() < 0.3
    assert ids[0] == START and ids[-1] == END
    assert vocab.decode(ids) == ds.label(0)
    # size estimates from headers are close to the real preprocessed sizes
    est = ds.sizes()
    real = [ds[i][0].shape for i in range(len(ds))]
    ratio = [e[1] / r[1] for e, r in zip(est, real, strict=True)]
    assert np.median(np.abs(np.log(ratio))) < np.log(1.5)
    batch = collate([ds[i] for i in range(4)])
    assert batch.images.shape[0] == 4 and batch.images.shape[2] % 16 == 0 and batch.images.shape[3] % 16 == 0


def test_formula_dataset_augments_the_loaded_image(crohme_samples):
    from PIL import Image as PILImage

    from texlens.data.augment import build_augment
    from texlens.image import PreprocessConfig

    seen = []

    def invert(grey: np.ndarray) -> np.ndarray:
        seen.append(grey)
        return 255 - grey

    vocab = Vocab.build(s.latex for s in crohme_samples)
    plain = FormulaDataset(crohme_samples[:3], vocab, PreprocessConfig())
    inverted = FormulaDataset(crohme_samples[:3], vocab, PreprocessConfig(), augment=invert)
    base, _ = plain[0]
    flipped, _ = inverted[0]
    # the augmentation gets the image as loaded (uint8, here CROHME's white strokes on black) ...
    with PILImage.open(crohme_samples[0].image) as im:
        assert seen[0].dtype == np.uint8 and seen[0].shape == (im.height, im.width)
    # ... and preprocessing after it fixes the polarity again: ink = 1 either way
    assert flipped.shape == base.shape and np.abs(flipped - base).mean() < 0.02
    augmented = FormulaDataset(
        crohme_samples[:3], vocab, PreprocessConfig(), augment=build_augment(1.0, seed=0)
    )
    outs = [augmented[0][0] for _ in range(3)]
    assert all(o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert any(o.shape != base.shape or np.abs(o - base).mean() > 0.01 for o in outs)  # it perturbs


def test_a_blank_training_image_is_skipped_not_fatal(shared_data) -> None:
    """IM2LATEX's 196.png is blank: training takes the next sample instead of dying hours into a run."""
    from texlens.data.dataset import FormulaDataset
    from texlens.data.formats import read_im2latex
    from texlens.image import PreprocessConfig
    from texlens.latex import Vocab

    im = shared_data / "im2latex100k"
    samples, _ = read_im2latex(im / "val.formulas.norm.txt", im / "val.matching.txt", im / "images_val")
    blank = [s for s in samples if s.image.name == "196.png"]
    good = [s for s in samples if s.image.name in ("0.png", "1.png")]
    assert len(blank) == 1 and len(good) == 2
    ds = FormulaDataset(blank + good, Vocab.build([s.latex for s in good + blank]), PreprocessConfig())
    image, ids = ds[0]
    assert image.ndim == 2 and image.max() > 0
    assert ids.tolist() == ds.items[1].ids.tolist()  # the next sample stood in
    assert ds.bad_images == {blank[0].image}
