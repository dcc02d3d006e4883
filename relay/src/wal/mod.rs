//! PostgreSQL WAL format knowledge: LSNs, segment and history file names, timeline history,
//! page and record headers, a streaming validator of WAL bytes, and PostgreSQL's rule for
//! replication slot names.
//!
//! Nothing here does I/O; nothing outside this module interprets WAL bytes or file names.

pub mod decoder;
pub mod error;
pub mod history;
pub mod lsn;
pub mod page;
pub mod record;
pub mod scan;
pub mod segment;
pub mod slot_name;
#[cfg(test)]
pub(crate) mod testwal;

pub use decoder::{DecoderStatus, RecordInfo, WalDecoder, ZeroPolicy};
pub use error::WalError;
pub use lsn::{Lsn, TimeLineId, WAL_PAGE_SIZE};
pub use scan::{find_end_of_wal, EndOfWal, EndReason};
