//! What every downstream session shares: the store, the registry of connected replicas, the
//! shutdown token, the source of BackendKeyData pids, and the access rules (hba rules, users,
//! TLS identity), which a session reads once, when it starts ([`Context::access`]), so that a
//! reload ([`Context::set_access`]) applies to new connections only.
//!
//! Nothing here decides what may be served: that is the store's servable end
//! ([`crate::store::servable`]), read through [`Context::store`].

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::auth::Access;
pub use crate::config::Limits;
use crate::lag::Registry;
use crate::store::Store;

/// What every downstream session shares.
pub struct Context {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub cancel: CancellationToken,
    next_pid: AtomicI32,
    access: RwLock<Arc<Access>>,
    pub limits: Limits,
    /// One permit per session, `max_connections` of them.
    connections: Arc<Semaphore>,
    /// Sessions past the limit that are read up to their startup packet before they are
    /// refused (PostgreSQL's dead-end backends), at most `max_connections` of them too.
    refusals: Arc<Semaphore>,
}

/// What the listener does with a new connection.
pub enum Admission {
    /// Within `max_connections`: a session, holding its permit until it ends.
    Session(OwnedSemaphorePermit),
    /// Past the limit: read the startup packet, then refuse with `53300`.
    Refuse(OwnedSemaphorePermit),
    /// Past the limit with the refusals full too: refuse at once, reading nothing.
    RefuseNow,
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
            access: RwLock::new(Arc::new(Access::loopback_default())),
            limits: Limits::default(),
            connections: Arc::new(Semaphore::new(Limits::default().max_connections)),
            refusals: Arc::new(Semaphore::new(Limits::default().max_connections)),
        }
    }

    /// The same context with these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.connections = Arc::new(Semaphore::new(limits.max_connections));
        self.refusals = Arc::new(Semaphore::new(limits.max_connections));
        self.limits = limits;
        self
    }

    /// Takes a connection slot for a new client, if there is one.
    pub fn admit(&self) -> Admission {
        if let Ok(p) = self.connections.clone().try_acquire_owned() {
            Admission::Session(p)
        } else if let Ok(p) = self.refusals.clone().try_acquire_owned() {
            Admission::Refuse(p)
        } else {
            Admission::RefuseNow
        }
    }

    /// The same context with these access rules (the default: loopback trusted, no TLS).
    pub fn with_access(self, access: Access) -> Self {
        self.set_access(access);
        self
    }

    /// The access rules for a new connection.
    pub fn access(&self) -> Arc<Access> {
        match self.access.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the access rules for connections that start from now on (a reload).
    pub fn set_access(&self, access: Access) {
        let access = Arc::new(access);
        match self.access.write() {
            Ok(mut a) => *a = access,
            Err(poisoned) => *poisoned.into_inner() = access,
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
