//! What every downstream session shares: the store, the registry of connected replicas, the
//! shutdown token, the source of BackendKeyData pids, and the access rules (hba rules, users,
//! TLS identity), which a session reads once, when it starts ([`Context::access`]), so that a
//! reload ([`Context::set_access`]) applies to new connections only, and the limits
//! (`max_connections`, `authentication_timeout`, `wal_sender_timeout`), which a reload
//! replaces too ([`Context::set_limits`]): `max_connections` and `authentication_timeout` are
//! read when a connection arrives, `wal_sender_timeout` by every walsender as it streams (as
//! PostgreSQL's walsenders re-read it at SIGHUP), through [`Context::subscribe_limits`].
//!
//! Nothing here decides what may be served: that is the store's servable end
//! ([`crate::store::servable`]), read through [`Context::store`].

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::auth::Access;
pub use crate::config::Limits;
use crate::lag::Registry;
use crate::store::Store;
use crate::upstream::backfill::Backfiller;

/// What every downstream session shares.
pub struct Context {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub cancel: CancellationToken,
    next_pid: AtomicI32,
    access: RwLock<Arc<Access>>,
    limits: watch::Sender<Limits>,
    /// Sessions in progress, each holding a [`Permit`]: at most `max_connections` are let in.
    /// A count rather than a semaphore, so that lowering `max_connections` by a reload below
    /// the sessions in progress ends none of them (as the count falls, new ones are let in
    /// again once it is under the new limit).
    connections: Arc<AtomicUsize>,
    /// Sessions past the limit that are read up to their startup packet before they are
    /// refused (PostgreSQL's dead-end backends), at most `max_connections` of them too.
    refusals: Arc<AtomicUsize>,
    /// Where WAL older than the store's oldest segment comes from, when a walsender is asked
    /// for it ([`crate::upstream::backfill`]); `None`: such requests get `58P01` at once.
    backfill: Option<Arc<Backfiller>>,
}

/// What the listener does with a new connection.
pub enum Admission {
    /// Within `max_connections`: a session, holding its permit until it ends.
    Session(Permit),
    /// Past the limit: read the startup packet, then refuse with `53300`.
    Refuse(Permit),
    /// Past the limit with the refusals full too: refuse at once, reading nothing.
    RefuseNow,
}

/// One place in a count of [`Context`]'s, given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Permit {
    /// A place in `count` if it is below `max`.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(count.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
            limits: watch::Sender::new(Limits::default()),
            connections: Arc::default(),
            refusals: Arc::default(),
            backfill: None,
        }
    }

    /// The same context, backfilling from the upstream through `backfill`.
    pub fn with_backfill(mut self, backfill: Arc<Backfiller>) -> Self {
        self.backfill = Some(backfill);
        self
    }

    /// The backfiller, if the relay backfills.
    pub fn backfill(&self) -> Option<&Arc<Backfiller>> {
        self.backfill.as_ref()
    }

    /// The same context with these limits.
    pub fn with_limits(self, limits: Limits) -> Self {
        self.set_limits(limits);
        self
    }

    /// The limits in force now.
    pub fn limits(&self) -> Limits {
        *self.limits.borrow()
    }

    /// Replaces the limits (a reload): connections that arrive from now on are admitted and
    /// timed by them, and running walsenders take the new `wal_sender_timeout` at once.
    pub fn set_limits(&self, limits: Limits) {
        self.limits.send_replace(limits);
    }

    /// The limits, seen changing: a walsender's `wal_sender_timeout`.
    pub fn subscribe_limits(&self) -> watch::Receiver<Limits> {
        self.limits.subscribe()
    }

    /// Sessions in progress (those let in under `max_connections`).
    pub fn connections_in_use(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Takes a connection slot for a new client, if there is one.
    pub fn admit(&self) -> Admission {
        let max = self.limits().max_connections;
        if let Some(p) = Permit::take(&self.connections, max) {
            Admission::Session(p)
        } else if let Some(p) = Permit::take(&self.refusals, max) {
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
