"""Everything that speaks Redis: client and keys, pub/sub and streams transports, registry, work queue."""
