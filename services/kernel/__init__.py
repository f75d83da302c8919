"""The shared kernel: crypto, envelope, registry and policy, pseudonyms, Kafka I/O, config, errors."""
