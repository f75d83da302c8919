"""The pseudonymization service: evaluates the oblivious PRF of blinded identifiers with a key that never
leaves it (``core.py`` pure, ``app.py`` the HTTP edge, ``metrics.py``, ``client.py`` for adapters)."""
