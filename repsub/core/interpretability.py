"""An automated interpretability index: a simulated two-alternative forced choice on a unit's exemplars
(Klindt et al. 2023; Zimmermann et al.'s machine interpretability score).

Each of `trials` trials draws, without replacement, `references` + 1 of the unit's top exemplars and as many
of its bottom ones: one of each is a query, the others the two reference sets. Each query's similarity to
the 2 x `references` reference images is z-scored over them (0 where they are all equal) and pooled by the
mean over each set: m_top(q), m_bottom(q). The right assignment (the top query is the top one) has the logit
m_top(q_top) + m_bottom(q_bottom), the wrong one m_top(q_bottom) + m_bottom(q_top); a softmax over the two,
at `temperature`, gives the probability of the right choice. The index is its mean over the trials: 0.5 is
chance, 1 a unit whose top and bottom images are told apart every time.

Z-scoring makes the logits scale-free. A unit that fires for exactly one class, under the `labels`
similarity: the top query is like every top reference and unlike every bottom one (z +1 and -1), and the
bottom query is unlike the top references; the logit difference is 2 or more, so the default temperature
0.05 gives p >= 1 - 1e-17, which is 1.0 in float64. A lower temperature approaches an ideal observer's hard
choice; a higher one grades close calls.

Similarities take items of a batch of trials, queries [T, Q, ...] and references [T, R, ...], and return
[T, Q, R]: `labels` (1 for the same class, else 0), `pixels` (negative L2 distance of the images),
`features` (cosine of feature vectors) and `lpips` (negative squared L2 distance of LPIPS embeddings, which
is the negative LPIPS distance: repsub.capture.perceptual). Items are precomputed once per image; no model here.

Two variants (Klindt et al. 2023): `extremal` tells the top exemplars from the bottom ones; `central` tells
images of the 50-75% band of the unit's activation (the "high" side) from the 25-50% band (the "low" side),
the same task on typical rather than extreme images (`central_index`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

DEFAULT_TRIALS = 20
DEFAULT_REFERENCES = 9
DEFAULT_TEMPERATURE = 0.05

Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]


def labels_similarity(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """1.0 where a query and a reference have the same class label, else 0.0: [T, Q] x [T, R] -> [T, Q, R]."""
    return (queries[:, :, None] == references[:, None, :]).astype(np.float64)


def pixels_similarity(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Negative Euclidean distance of the images (any shape past [T, Q]): [T, Q, ...] x [T, R, ...] -> [T, Q, R]."""
    return -np.sqrt(_squared_distances(queries, references))


def features_similarity(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Cosine similarity of feature vectors (0 for a zero vector): [T, Q, D] x [T, R, D] -> [T, Q, R]."""
    q, r = _unit_vectors(queries), _unit_vectors(references)
    return np.einsum("tqd,trd->tqr", q, r)


def lpips_similarity(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Negative squared Euclidean distance of embeddings: [T, Q, D] x [T, R, D] -> [T, Q, R]. On LPIPS embeddings
    (unit-normalized channels scaled by sqrt(weight / positions), repsub.capture.perceptual) it is the
    negative LPIPS distance."""
    return -_squared_distances(queries, references)


def _squared_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """|q - r|^2 of items flattened past [T, Q] and [T, R], as |q|^2 + |r|^2 - 2 q.r in float64 (no [T, Q, R, D]
    difference array: an image or an LPIPS embedding has tens of thousands of values), clipped at 0."""
    q = queries.reshape(*queries.shape[:2], -1).astype(np.float64)
    r = references.reshape(*references.shape[:2], -1).astype(np.float64)
    cross = np.einsum("tqd,trd->tqr", q, r)
    squared = (q * q).sum(-1)[:, :, None] + (r * r).sum(-1)[:, None, :] - 2 * cross
    return np.maximum(squared, 0.0)


def _unit_vectors(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 0)


SIMILARITIES: dict[str, Similarity] = {"labels": labels_similarity, "pixels": pixels_similarity,
                                       "features": features_similarity, "lpips": lpips_similarity}  # fmt: skip
VARIANTS = ("extremal", "central")
CENTRAL_BANDS = ("25-50%", "50-75%")  # the low and the high side of the central variant (band names)


def unit_rng(seed: int, layer: str, unit: int, variant: str = "extremal") -> np.random.Generator:
    """The generator of one unit's trials: the same for the same (seed, layer, unit, variant) in any process or
    order (the extremal variant's stream is that of runs made before variants existed)."""
    stream = [int(seed), zlib.crc32(layer.encode()), int(unit)]
    if variant != "extremal":
        stream.append(VARIANTS.index(variant))
    return np.random.default_rng(stream)


def _zscore(values: np.ndarray) -> np.ndarray:
    """Z-scores along the last axis; 0 where the values are all equal."""
    spread = values.std(axis=-1, keepdims=True)
    centred = values - values.mean(axis=-1, keepdims=True)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)


def two_afc_index(
    top: np.ndarray,
    bottom: np.ndarray,
    similarity: Similarity,
    rng: np.random.Generator,
    trials: int = DEFAULT_TRIALS,
    references: int = DEFAULT_REFERENCES,
    temperature: float = DEFAULT_TEMPERATURE,
    sides: tuple[str, str] = ("top exemplars", "bottom exemplars"),
) -> float:
    """The index of one unit from its top and bottom exemplars' items (labels [k] or images [k, ...], one per
    exemplar; the two sides may hold different counts), all trials at once. `sides` names them in errors."""
    needed = references + 1
    for side, items in zip(sides, (top, bottom), strict=True):
        if len(items) < needed:
            raise ValueError(
                f"{references} references and a query need {needed} {side}, the unit has {len(items)}"
            )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def draw(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picks = np.argsort(rng.random((trials, len(items))), axis=1)[:, :needed]  # distinct, per trial
        chosen = items[picks]  # [T, references + 1, ...]
        return chosen[:, :1], chosen[:, 1:]

    query_top, refs_top = draw(np.asarray(top))
    query_bottom, refs_bottom = draw(np.asarray(bottom))
    queries = np.concatenate([query_top, query_bottom], axis=1)  # [T, 2, ...]: top query first
    refs = np.concatenate([refs_top, refs_bottom], axis=1)  # [T, 2 * references, ...]
    z = _zscore(similarity(queries, refs))  # [T, 2, 2 * references]
    to_top, to_bottom = z[..., :references].mean(-1), z[..., references:].mean(-1)  # [T, 2]
    right = to_top[:, 0] + to_bottom[:, 1]
    wrong = to_top[:, 1] + to_bottom[:, 0]
    p_right = 0.5 * (1 + np.tanh((right - wrong) / (2 * temperature)))  # the two-way softmax, stably
    return float(p_right.mean())


def central_index(
    low: np.ndarray,
    high: np.ndarray,
    similarity: Similarity,
    rng: np.random.Generator,
    trials: int = DEFAULT_TRIALS,
    references: int = DEFAULT_REFERENCES,
    temperature: float = DEFAULT_TEMPERATURE,
) -> float:
    """The central variant of one unit: the 2AFC of `two_afc_index` between images of its 50-75% band (`high`,
    in the place of the top exemplars) and of its 25-50% band (`low`, of the bottom ones)."""
    sides = tuple(f"images of its {band} band" for band in reversed(CENTRAL_BANDS))
    return two_afc_index(high, low, similarity, rng, trials, references, temperature, sides)
