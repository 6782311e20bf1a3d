//! The event model: a captured row change, its identity and its place in
//! delivery order. The log reader (`eventlog/`) and the plugin runtime
//! (`runtime/`) both speak it; neither depends on the other.

/// A delivery position: the committed transaction's number in delivery
/// order (`ord`) and the event's sequence number. `(ord, 0)` is before every
/// event of transaction `ord`; `(0, 0)` is the start of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Position {
    pub ord: i64,
    pub seq: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}/{}", self.ord, self.seq)
    }
}

/// An event's identity: its writing transaction and sequence number, what a
/// plugin sees as `event.position`, written `TXID/SEQ` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct EventRef {
    pub txid: u64,
    pub seq: i64,
}

impl std::fmt::Display for EventRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.txid, self.seq)
    }
}

impl std::str::FromStr for EventRef {
    type Err = String;

    fn from_str(text: &str) -> Result<EventRef, String> {
        let (txid, seq) = text.split_once('/').ok_or_else(|| {
            format!("`{text}` is not an event; write TXID/SEQ, as `status` shows cursors (e.g. 7741/1200)")
        })?;
        Ok(EventRef {
            txid: txid
                .trim()
                .parse()
                .map_err(|e| format!("transaction id `{txid}`: {e}"))?,
            seq: seq
                .trim()
                .parse()
                .map_err(|e| format!("sequence `{seq}`: {e}"))?,
        })
    }
}

/// Operation as stored in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn code(self) -> char {
        match self {
            Op::Insert => 'I',
            Op::Update => 'U',
            Op::Delete => 'D',
            Op::Truncate => 'T',
        }
    }

    pub(crate) fn from_code(code: i8) -> Op {
        match code as u8 {
            b'I' => Op::Insert,
            b'U' => Op::Update,
            b'D' => Op::Delete,
            _ => Op::Truncate,
        }
    }
}

/// One captured row change, as read from the log. Rows stay JSON text: the
/// host passes them through unparsed.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub position: Position,
    /// The writing transaction (with `position.seq`, the event's identity).
    pub txid: u64,
    pub op: Op,
    pub schema: String,
    pub table: String,
    pub key: Option<String>,
    pub new_row: Option<String>,
    pub old_row: Option<String>,
    pub captured_at: String,
    pub user: String,
    pub application_name: String,
    pub tag: Option<String>,
}

impl LoggedEvent {
    pub fn event_ref(&self) -> EventRef {
        EventRef {
            txid: self.txid,
            seq: self.position.seq,
        }
    }

    /// Stable id: a name-based UUID of the event's transaction and sequence
    /// number, identical on every delivery (and across the upgrade to commit
    /// order, which kept both).
    pub fn id(&self) -> uuid::Uuid {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x5d0c_1b6e_8a7e_4f1c_9c3e_2f4b_7a61_0e11);
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(&self.txid.to_be_bytes());
        name[8..].copy_from_slice(&self.position.seq.to_be_bytes());
        uuid::Uuid::new_v5(&NAMESPACE, &name)
    }
}
