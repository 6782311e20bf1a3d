//! The nats and redis sinks against the real brokers.
