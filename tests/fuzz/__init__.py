"""Fuzz targets: what the bus's processors do with bytes any participant may send.

:mod:`.targets` holds each target and the contract they all keep (a clean result or a
``LianfangError``); ``python -m tests.fuzz`` runs them coverage-guided with atheris for as long as
asked (``make fuzz``); ``tests/unit/test_fuzz.py`` runs each briefly with a fixed seed in ``make test``.
"""
