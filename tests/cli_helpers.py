"""Running the command line in-process, as a user would from a shell."""

from repsub.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    """`repsub *argv`: (exit status, stdout + stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err
