//! The rabbitmq and mqtt sinks against the real brokers.
