"""Bases of a layer's activation space: the directions a row can describe instead of a unit (issue 18).

A basis of a layer holds K directions and an encoder that maps the layer's activation vector at one position
(a conv layer's C channels at (h, w), a linear layer's N neurons, a token's D features) to K responses.
`unit` is the identity basis: its responses are the units themselves.

- `basis`: the `Basis` object (encode, decode, state, content hash) and the orientation rule of signed bases.
- `pca`: the exact, mergeable float64 sums (`PcaSums`) and the PCA basis from them.
- `linear`: `unit`, `random` (a seeded orthonormal rotation) and `vectors` (the user's own directions).
- `ica`, `nmf`, `kmeans`: scikit-learn's FastICA, NMF and KMeans on a sample of activation vectors.
- `sae`: a TopK sparse autoencoder (written here: see its module docstring for why not overcomplete).
- `fit`: one entry point, `fit_basis(kind, vectors, size, ...)`, with the limits of each kind.
- `metrics`: fraction of variance explained, mean L0, dead directions, stability (Hungarian matching).
"""
