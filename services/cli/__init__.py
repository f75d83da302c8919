"""The ``lianfang`` command: one module per group of subcommands, wired together in :mod:`.main`."""

from services.cli.main import FAST_KDF_ENV, main

__all__ = ["FAST_KDF_ENV", "main"]
