"""Recording a hand-made run's commands the way every command does: through the run's write session."""

from __future__ import annotations

from repsub.runstore.session import WriteSession
from repsub.runstore.writer import RunWriter


def record_command(writer, command: str, identity: dict, config: dict, catalog=None, invariants=None) -> dict:
    """Record in the manifest that `command` completed with `config` (rows written before, by hand); returns
    the manifest. The session checks the run (schema, model, invariants) and holds its lock meanwhile."""
    with WriteSession(
        writer, command, identity, config, [], invariants=invariants, catalog=catalog
    ) as session:
        return session.complete(config)


def adopt_stray_files(run_dir) -> None:
    """Let the next write session adopt table files written into `run_dir` by hand (a run's snapshot lists
    only committed files: repsub.runstore.snapshot): a session of a command that writes nothing."""
    writer = RunWriter(run_dir)
    manifest = writer.read_manifest() or {}
    with WriteSession(writer, "adopt", manifest.get("model") or {}, {}, []) as session:
        session.complete({})
