"""The science, knowing nothing of files, Ray or S3: class selectivity (streaming per-class sums and the
index) and Representative Substitution."""
