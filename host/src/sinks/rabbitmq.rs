//! The rabbitmq sink (see the module doc of `sinks`).

use super::{BurstResult, Message};

/// A connection to the broker.
#[derive(Debug)]
pub struct Rabbitmq {}

impl Rabbitmq {
    pub async fn connect(url: &str, exchange: Option<&str>) -> Result<Rabbitmq, String> {
        let _ = (url, exchange);
        Err("the rabbitmq sink is not built yet".into())
    }

    pub async fn send(&mut self, burst: &[Message]) -> Result<BurstResult, String> {
        let _ = burst;
        Err("the rabbitmq sink is not built yet".into())
    }
}
