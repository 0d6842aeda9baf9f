"""CLI sub-commands.

Every module in this package that defines ``register(subparsers)`` is picked up by
:func:`exposure.cli.main`. ``register`` adds one (or more) sub-parsers and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code)
with ``parser.set_defaults(func=...)``.
"""
