//! The one integration-test binary: real PostgreSQL, real plugin components.
//! Each test creates and drops its own database.

mod authoring;
mod capture;
mod cli;
mod delivery;
mod docs;
mod errors;
mod faults;
mod guarantees;
mod hardening;
mod layout;
mod order;
mod packaging;
mod polyglot;
mod proxy;
mod publish;
mod reload;
mod sdk_capabilities;
mod sinks_nats_redis;
mod sinks_rabbitmq_mqtt;
mod support;
mod webhook;
