"""One module per `cvsjepa` subcommand. Each defines NAME, HELP, ``add_parser(subparsers)`` and
``run(args) -> int``; `cli.py` discovers them, so adding a command is adding a file."""
