"""Running ``cvsjepa`` in the test process and reading its one-line errors."""

from __future__ import annotations


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``cvsjepa ARGS`` in this process: (exit status, stdout, stderr)."""
    from cvsjepa.cli import main

    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(err: str) -> str:
    """The error line of a failed command, after checking it is the only ``error`` line and no traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("cvsjepa: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]
