//! The `/status` document as `walrelay status` reads it: read-side structs, and the two lag
//! figures derived from them when a relay does not send its own.
//!
//! These are not the server's [`crate::http::status::Status`]: every field here is optional
//! (`#[serde(default)]`, unknown fields ignored), so `status` from one version can read a relay
//! of another (fields added or missing), and the server types can keep borrowing static
//! strings. A test serialises the server's type and reads it back here, so the two cannot drift
//! apart unnoticed.

use serde::Deserialize;

use crate::wal::Lsn;

/// `/status`, read side. Every field is optional: see the module docs.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct StatusDoc {
    pub upstream: UpstreamView,
    pub downstreams: Vec<DownstreamView>,
    pub diverged_downstreams: Vec<DivergedView>,
    /// Present when the relay runs with `--failover-standby`.
    pub failover: Option<FailoverView>,
    /// Absent from relays older than the storage figures.
    pub store: Option<StoreView>,
    pub slots: Vec<SlotView>,
}

/// The store on disk.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct StoreView {
    pub servable_lsn: Option<String>,
    pub wal_segments: Option<u64>,
    pub wal_stored_bytes: Option<u64>,
    pub data_dir_free_bytes: Option<u64>,
    pub data_dir_size_bytes: Option<u64>,
}

/// A replication slot on the relay.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SlotView {
    pub slot_name: Option<String>,
    pub temporary: Option<bool>,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<String>,
    pub invalidation_reason: Option<String>,
    pub retained_bytes: Option<u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UpstreamView {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub connected: Option<bool>,
    pub timeline: Option<u32>,
    pub system_identifier: Option<String>,
    pub server_version: Option<String>,
    pub received_lsn: Option<String>,
    pub flushed_lsn: Option<String>,
    pub upstream_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub reconnects: Option<u64>,
    pub last_error: Option<String>,
    pub ingest_error: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DownstreamView {
    pub pid: Option<i32>,
    pub application_name: Option<String>,
    pub usename: Option<String>,
    pub client_addr: Option<String>,
    pub client_port: Option<u16>,
    pub state: Option<String>,
    pub timeline: Option<u32>,
    pub slot_name: Option<String>,
    pub sent_lsn: Option<String>,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    pub sent_lag_bytes: Option<u64>,
    pub replay_lag_bytes: Option<u64>,
}

/// A downstream that received WAL past a fork point and has to be rebuilt.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DivergedView {
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub sent_lsn: Option<String>,
    pub fork_lsn: Option<String>,
}

/// `--failover-standby` state: the serving limit and each named candidate.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FailoverView {
    pub standbys: Vec<CandidateView>,
    pub limit_lsn: Option<String>,
    pub holding: Option<bool>,
    pub connected: Option<bool>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CandidateView {
    pub application_name: Option<String>,
    /// `confirmed`, `missing` or `never_seen`.
    pub state: Option<String>,
    /// `connected`, `slot`, `persisted` or `missing` (absent from relays before slots
    /// could place a candidate).
    pub source: Option<String>,
    pub flush_lsn: Option<String>,
}

/// An LSN field as an [`Lsn`]; None when absent or not in `X/X` form.
pub(crate) fn parse_lsn(s: &Option<String>) -> Option<Lsn> {
    s.as_deref().and_then(|s| s.parse().ok())
}

impl UpstreamView {
    /// Upstream WAL end minus the relay's durable end; from the document's own figure when a
    /// relay sends one, else from the two LSNs.
    pub fn lag(&self) -> Option<u64> {
        self.lag_bytes.or_else(|| {
            Some(parse_lsn(&self.upstream_lsn)?.saturating_sub(parse_lsn(&self.flushed_lsn)?))
        })
    }
}

impl DownstreamView {
    /// Bytes the replica has yet to replay. None when it reports no replay position at all
    /// (pg_receivewal sends 0/0): "everything behind" would be a meaningless, huge figure.
    pub fn replay_lag(&self, flushed: Option<Lsn>) -> Option<u64> {
        let replay = parse_lsn(&self.replay_lsn);
        if replay.is_some_and(|l| !l.is_valid()) {
            return None;
        }
        self.replay_lag_bytes
            .or_else(|| Some(flushed?.saturating_sub(replay?)))
    }
}

/// Documents the render and view tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::failover::watcher::CandidateJson;
    use crate::failover::{CandidateState, FailoverStatus, HoldState, Source};
    use crate::http::status::{
        DivergedJson, DownstreamJson, SlotJson, Status, StoreJson, UpstreamJson,
    };

    pub(crate) fn upstream() -> UpstreamView {
        UpstreamView {
            host: Some("10.0.0.1".into()),
            port: Some(5432),
            connected: Some(true),
            timeline: Some(3),
            system_identifier: Some("7301234567890123456".into()),
            server_version: Some("16.4".into()),
            received_lsn: Some("0/3000060".into()),
            flushed_lsn: Some("0/3000060".into()),
            upstream_lsn: Some("0/3130060".into()),
            lag_bytes: Some(0x130000),
            reconnects: Some(0),
            last_error: None,
            ingest_error: None,
        }
    }

    pub(crate) fn downstream(name: &str) -> DownstreamView {
        DownstreamView {
            pid: Some(1),
            application_name: Some(name.into()),
            usename: Some("replicator".into()),
            client_addr: Some("10.1.0.7".into()),
            client_port: Some(40000),
            state: Some("streaming".into()),
            timeline: Some(3),
            slot_name: Some(format!("{name}_slot")),
            sent_lsn: Some("0/3000060".into()),
            write_lsn: Some("0/3000060".into()),
            flush_lsn: Some("0/3000060".into()),
            replay_lsn: Some("0/2ED0060".into()),
            write_lag_seconds: Some(0.35),
            flush_lag_seconds: Some(2.1),
            replay_lag_seconds: None,
            sent_lag_bytes: Some(0),
            replay_lag_bytes: Some(0x130000),
        }
    }

    /// The server's own document, every section filled in.
    pub(crate) fn server_status() -> Status {
        Status {
            upstream: UpstreamJson {
                host: Some("h".into()),
                port: Some(5432),
                connected: true,
                timeline: Some(2),
                system_identifier: Some("73".into()),
                server_version: Some("17.2".into()),
                received_lsn: Some(Lsn(0x300_0000)),
                flushed_lsn: Some(Lsn(0x300_0000)),
                upstream_lsn: Some(Lsn(0x310_0000)),
                lag_bytes: Some(0x10_0000),
                lag_seconds: 0.0,
                stream_start_lsn: Some(Lsn(0x100_0000)),
                reconnects: 4,
                last_error: Some("e".into()),
                ingest_error: None,
            },
            downstreams: vec![DownstreamJson {
                pid: 7,
                application_name: "app".into(),
                usename: "u".into(),
                client_addr: "::1".into(),
                client_port: 5,
                state: "streaming",
                timeline: Some(2),
                slot_name: None,
                sent_lsn: Lsn(0x300_0000),
                write_lsn: Lsn(0x2FF_0000),
                flush_lsn: Lsn(0x2FE_0000),
                replay_lsn: Lsn(0x2FD_0000),
                write_lag_seconds: Some(0.5),
                flush_lag_seconds: None,
                replay_lag_seconds: Some(1.5),
                sent_lag_bytes: 0,
                replay_lag_bytes: Some(0x3_0000),
                bytes_sent: 9,
                backend_start: 1.0,
            }],
            diverged_downstreams: vec![DivergedJson {
                application_name: "old".into(),
                client_addr: "10.0.0.9".into(),
                sent_lsn: Lsn(0x500_0000),
                fork_lsn: Lsn(0x480_0000),
            }],
            failover: Some(FailoverStatus {
                standbys: vec![
                    CandidateJson::new(
                        "ha1".into(),
                        CandidateState {
                            state: HoldState::Confirmed,
                            source: Source::Connected,
                            flush_lsn: Some(Lsn(0x300_0000)),
                        },
                    ),
                    CandidateJson::new(
                        "ha2".into(),
                        CandidateState {
                            state: HoldState::Missing,
                            source: Source::Persisted,
                            flush_lsn: Some(Lsn(0x2F0_0000)),
                        },
                    ),
                    CandidateJson::new("ha3".into(), CandidateState::NEVER_SEEN),
                ],
                missing_policy: "hold",
                limit_lsn: Some(Lsn(0x2F0_0000)),
                holding: true,
                connected: false,
                last_error: Some("f".into()),
                reading: Some("push"),
            }),
            store: StoreJson {
                servable_lsn: Some(Lsn(0x2F0_0000)),
                wal_segments: Some(3),
                wal_stored_bytes: Some(3 << 24),
                data_dir_free_bytes: Some(1 << 30),
                data_dir_size_bytes: Some(4 << 30),
            },
            slots: vec![SlotJson {
                slot_name: "replica_slot".into(),
                temporary: false,
                active_pid: Some(7),
                restart_lsn: Some(Lsn(0x200_0000)),
                invalidation_reason: None,
                retained_bytes: 0xF0_0000,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{downstream, server_status, upstream};
    use super::*;

    #[test]
    fn reads_what_the_server_writes() {
        // The server's own type, serialised, read back: the read side can't drift from it.
        let status = server_status();
        let doc: StatusDoc =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        assert_eq!(
            doc.diverged_downstreams,
            vec![DivergedView {
                application_name: Some("old".into()),
                client_addr: Some("10.0.0.9".into()),
                sent_lsn: Some("0/5000000".into()),
                fork_lsn: Some("0/4800000".into()),
            }]
        );
        assert_eq!(
            doc.store,
            Some(StoreView {
                servable_lsn: Some("0/2F00000".into()),
                wal_segments: Some(3),
                wal_stored_bytes: Some(3 << 24),
                data_dir_free_bytes: Some(1 << 30),
                data_dir_size_bytes: Some(4 << 30),
            })
        );
        assert_eq!(
            doc.slots,
            vec![SlotView {
                slot_name: Some("replica_slot".into()),
                temporary: Some(false),
                active_pid: Some(7),
                restart_lsn: Some("0/2000000".into()),
                invalidation_reason: None,
                retained_bytes: Some(0xF0_0000),
            }]
        );
        let cand = |n: &str, st: &str, src: &str, l: Option<&str>| CandidateView {
            application_name: Some(n.into()),
            state: Some(st.into()),
            source: Some(src.into()),
            flush_lsn: l.map(Into::into),
        };
        assert_eq!(
            doc.failover,
            Some(FailoverView {
                standbys: vec![
                    cand("ha1", "confirmed", "connected", Some("0/3000000")),
                    cand("ha2", "missing", "persisted", Some("0/2F00000")),
                    cand("ha3", "never_seen", "missing", None),
                ],
                limit_lsn: Some("0/2F00000".into()),
                holding: Some(true),
                connected: Some(false),
                last_error: Some("f".into()),
            })
        );
        assert_eq!(
            doc.upstream,
            UpstreamView {
                host: Some("h".into()),
                port: Some(5432),
                connected: Some(true),
                timeline: Some(2),
                system_identifier: Some("73".into()),
                server_version: Some("17.2".into()),
                received_lsn: Some("0/3000000".into()),
                flushed_lsn: Some("0/3000000".into()),
                upstream_lsn: Some("0/3100000".into()),
                lag_bytes: Some(0x10_0000),
                reconnects: Some(4),
                last_error: Some("e".into()),
                ingest_error: None,
            }
        );
        assert_eq!(
            doc.downstreams,
            vec![DownstreamView {
                pid: Some(7),
                application_name: Some("app".into()),
                usename: Some("u".into()),
                client_addr: Some("::1".into()),
                client_port: Some(5),
                state: Some("streaming".into()),
                timeline: Some(2),
                slot_name: None,
                sent_lsn: Some("0/3000000".into()),
                write_lsn: Some("0/2FF0000".into()),
                flush_lsn: Some("0/2FE0000".into()),
                replay_lsn: Some("0/2FD0000".into()),
                write_lag_seconds: Some(0.5),
                flush_lag_seconds: None,
                replay_lag_seconds: Some(1.5),
                sent_lag_bytes: Some(0),
                replay_lag_bytes: Some(0x3_0000),
            }]
        );
    }

    #[test]
    fn lag_fallbacks() {
        let mut up = upstream();
        up.lag_bytes = None;
        assert_eq!(up.lag(), Some(0x130000));
        up.upstream_lsn = None;
        assert_eq!(up.lag(), None);
        let mut d = downstream("x");
        d.replay_lag_bytes = None;
        assert_eq!(d.replay_lag(Some(Lsn(0x300_0060))), Some(0x130000));
        assert_eq!(d.replay_lag(None), None);
        d.replay_lsn = Some("0/0".into());
        d.replay_lag_bytes = Some(5);
        assert_eq!(d.replay_lag(Some(Lsn(0x300_0060))), None);
    }
}
