"""The kinds of basis a run can fit (repsub.core.bases.fit.KINDS, the identity `unit` aside), light: the command
line and the sweep config list them without importing torch."""

FITTED_KINDS = ("random", "pca", "ica", "nmf", "kmeans", "sae", "vectors")
FROM_A_FILE = ("vectors",)  # the user's own directions: a file, so not in a sweep config
