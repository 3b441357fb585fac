"""The command line (``sambench``, ``python -m bench``): parsers, commands, flags, console."""


def main(argv: list[str] | None = None) -> int:
    """The ``sambench`` entry point (bench.cli.app.main, imported on call)."""
    from bench.cli.app import main as run

    return run(argv)
