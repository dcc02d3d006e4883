//! PostgreSQL WAL format knowledge: LSNs, segment and history file names, timeline history.
//!
//! Nothing here does I/O; nothing outside this module interprets WAL bytes or file names.

pub mod history;
pub mod lsn;
pub mod segment;

pub use lsn::{Lsn, TimeLineId, WAL_PAGE_SIZE};
