"""The Python SDK for agency systems: publish sealed events through a durable outbox, read the inbox."""
