//! What every downstream session shares: the store, the registry of connected replicas, the
//! shutdown token, and the source of BackendKeyData pids.
//!
//! Nothing here decides what may be served: that is the store's servable end
//! ([`crate::store::servable`]), read through [`Context::store`].

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::lag::Registry;
use crate::store::Store;

/// What every downstream session shares.
pub struct Context {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub cancel: CancellationToken,
    next_pid: AtomicI32,
}

impl Context {
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, cancel: CancellationToken) -> Self {
        // Start pids away from 0 and from small numbers, so that temp slot names
        // (`pg_walreceiver_<pid>`) look like PostgreSQL's and never collide after a restart
        // within the same second.
        let seed = (std::process::id() as i32 & 0x7FFF) << 12;
        Context {
            store,
            registry,
            cancel,
            next_pid: AtomicI32::new(seed.max(1000)),
        }
    }

    /// A distinct, non-zero pid for BackendKeyData.
    pub fn next_pid(&self) -> i32 {
        let p = self.next_pid.fetch_add(1, Ordering::Relaxed);
        if p <= 0 {
            self.next_pid.store(1000, Ordering::Relaxed);
            1000
        } else {
            p
        }
    }
}
