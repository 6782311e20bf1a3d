//! Background upkeep that no deliverer waits for: re-checking the capture
//! triggers (`reconciler.rs`) and pruning the log (`pruner.rs`).

mod pruner;
mod reconciler;

pub(crate) use pruner::keep_log_pruned;
pub(crate) use reconciler::keep_triggers_reconciled;
