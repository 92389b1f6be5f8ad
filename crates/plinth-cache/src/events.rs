//! Change events (set, delete, invalidate, flush) on an in-process bus that
//! other blocks (realtime, queues) subscribe to.
//!
//! The bus is a bounded broadcast channel: a subscriber that falls more than
//! [`EVENT_BUS_CAPACITY`] events behind loses the oldest ones and is told
//! how many it missed (`RecvError::Lagged`); writers never wait for readers.

use plinth_core::{ResourceName, TenantId};
use serde::Serialize;

use crate::model::Revision;

pub const EVENT_BUS_CAPACITY: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CacheChange {
    Set {
        key: String,
        revision: Revision,
    },
    Delete {
        key: String,
        revision: Revision,
    },
    /// A bulk invalidation: `selector` as the client wrote it.
    Invalidate {
        selector: String,
        removed: u64,
    },
    /// The keyspace moved to `version`; older entries are unreachable.
    Flush {
        version: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheEvent {
    pub tenant: TenantId,
    pub keyspace: ResourceName,
    pub change: CacheChange,
}
