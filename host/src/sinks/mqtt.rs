//! The mqtt sink (see the module doc of `sinks`).

use super::{BurstResult, Message};

/// A connection to the broker.
#[derive(Debug)]
pub struct Mqtt {}

impl Mqtt {
    pub async fn connect(url: &str) -> Result<Mqtt, String> {
        let _ = (url);
        Err("the mqtt sink is not built yet".into())
    }

    pub async fn send(&mut self, burst: &[Message]) -> Result<BurstResult, String> {
        let _ = burst;
        Err("the mqtt sink is not built yet".into())
    }
}
