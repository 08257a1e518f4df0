"""Entrypoints for `ray job submit` (run from the repository root as the working directory)."""
