"""Sampling activation vectors for a basis (repsub.capture.positions): the seeded per-image rule, the layouts,
and shards of the data that sample exactly what one pass samples."""

from __future__ import annotations

import numpy as np
import torch

from repsub.capture.positions import image_draw, position_vectors, sample_vectors
from repsub.capture.reader import LayerCapture
from repsub.data.sources import open_source


def test_layouts_become_positions_by_channels():
    conv = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    vectors = position_vectors(conv, "conv")
    assert vectors.shape == (2, 20, 3) and torch.equal(vectors[1, 7], conv[1, :, 1, 2])
    assert torch.equal(position_vectors(conv.permute(0, 2, 3, 1), "nhwc"), vectors)
    assert position_vectors(torch.ones(2, 9), "linear").shape == (2, 1, 9)
    assert position_vectors(torch.ones(2, 5, 9), "tokens").shape == (2, 5, 9)


def test_the_draw_depends_on_the_image_alone():
    first = image_draw(3, 17, 64, 8, 0.2)
    assert first[0] == image_draw(3, 17, 64, 8, 0.2)[0]
    assert np.array_equal(first[1], image_draw(3, 17, 64, 8, 0.2)[1])
    assert len(set(first[1])) == 8 and first[1].max() < 64
    assert not np.array_equal(first[1], image_draw(4, 17, 64, 8, 0.2)[1])
    assert len(image_draw(0, 0, 1, 8, 0.2)[1]) == 1  # a linear layer: its one position
    held = [image_draw(0, i, 16, 4, 0.2)[0] for i in range(2000)]
    assert 0.15 < np.mean(held) < 0.25


def test_shards_sample_what_one_pass_samples(shallow_random, image_folder_dir):
    layers = shallow_random.select(["conv2", "fc5"])
    source = open_source(image_folder_dir, 32, shallow_random.mean, shallow_random.std)
    indices = list(range(len(source)))

    def sampled(subset, batch_size):
        return sample_vectors(shallow_random, layers, source.batches(batch_size, indices=subset, workers=0),
                              subset, positions=5, seed=1)  # fmt: skip

    whole = sampled(indices, 8)
    halves = [sampled(indices[:10], 3), sampled(indices[10:], 4)]
    for name in ("conv2", "fc5"):
        fit = torch.cat([half[name].fit for half in halves])
        held = torch.cat([half[name].held_out for half in halves])
        assert torch.allclose(fit, whole[name].fit, atol=1e-5) and torch.allclose(
            held, whole[name].held_out, atol=1e-5
        )
        assert len(whole[name].fit) + len(whole[name].held_out) == len(indices) * (
            5 if name == "conv2" else 1
        )
    # the vectors are the layer's channels at the drawn positions of the full map
    images, _ = next(iter(source.batches(1, indices=[0], workers=0)))
    full = LayerCapture(shallow_random.module, layers[:1], reduce=None)(images).activations["conv2"][0]
    held_out, kept = image_draw(1, 0, full.shape[1] * full.shape[2], 5, 0.2)
    expected = full.flatten(1).T[torch.from_numpy(kept)]
    got = (whole["conv2"].held_out if held_out else whole["conv2"].fit)[:5]
    assert torch.allclose(got, expected, atol=1e-5)
    assert whole["conv2"].n_positions == full.shape[1] * full.shape[2]
