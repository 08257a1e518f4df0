"""Everything about a run on disk or S3.

storage      locations (local directory, s3://): bytes, atomic and create-only writes, listing, S3 errors
tables       the tables: schema, file-naming rule, builder, status constants (one registry)
manifest     the manifest's constants and the run's description (schema version, versions, model identity)
location     reading a run location: files, the manifest, Parquet files (RunReader)
writer       writing tables into a run (RunWriter)
lock         the run lock: one writer at a time
provenance   which command made each row, and the rule against mixing rows of different meaning
session      the write session every command writes in (lock, claim, provenance, clean failure)
activations  per-image activations streamed during the selectivity pass
"""
