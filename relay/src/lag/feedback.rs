//! The narrow view of the connected downstreams that the upstream session needs: the two
//! minima a cascading standby forwards. `upstream/` depends on this trait, not on the registry
//! that implements it ([`super::Registry`]), so it never reaches into what downstream sessions
//! write.

use crate::proto::replication::HotStandbyFeedback;
use crate::wal::Lsn;

/// What the upstream session reports on behalf of the downstreams: the slowest replay (as
/// `apply`) and the oldest xmin / catalog_xmin they ask to keep (as hot-standby feedback).
pub trait Feedback: Send + Sync {
    /// The lowest replay position among downstreams that report one; `None` when none does
    /// (pg_receivewal reports 0/0 and must not drag apply down).
    fn min_replay(&self) -> Option<Lsn>;
    /// The oldest xmin and catalog_xmin (with epochs) any downstream asks to keep; zero where
    /// nobody asks.
    fn min_xmin(&self) -> HotStandbyFeedback;
}
