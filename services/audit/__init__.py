"""The tamper-evident audit trail, one module a job.

- :mod:`services.audit.chain`: signed entries, checkpoints, the key that signs them, parsing and
  verification (pure: bytes and keys in, results out; no file, thread or Kafka).
- :mod:`services.audit.trail`: the in-process writer (:class:`~services.audit.trail.AuditTrail`) and a
  process's own locked file (``LocalTrail``).
- :mod:`services.audit.shipping`: the ``Shipper`` thread that copies a file's new lines to the topic.
- :mod:`services.audit.kafka`: the Kafka edges (``KafkaSink``, ``read_topic``).
- :mod:`services.audit.metrics`: the shippers' series, reported by a collector the service holds.

This package imports none of them, so importing the pure core never loads a Kafka client.
"""
