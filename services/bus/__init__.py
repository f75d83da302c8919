"""Kafka edges: client login, admin (topics, ACLs, cluster id), the exactly-once runner."""
