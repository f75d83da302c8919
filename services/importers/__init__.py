"""Batch importers: agencies' export files (CSV, JSON Lines) published as events through the SDK.

- ``formats/*.toml`` — one declarative mapping per export format (columns → event fields, value maps,
  defaults), checked by :mod:`.spec` when loaded;
- :mod:`.values` and :mod:`.mapping` — the pure core: cells → typed values → validated events;
- :mod:`.reader` — encodings (UTF-8 with or without BOM, GB18030), CSV and JSON Lines, line numbers;
- :mod:`.ledger` — which rows were imported, so that nothing is imported twice, even across a crash;
- :mod:`.engine` — runs an import; :mod:`.progress` — the progress line;
- :mod:`.command` — ``lianfang import`` and ``lianfang simulate``.
"""
