//! [`Topology`]: the set-ups the failover and crash tests share, built in one expression: a
//! primary with the workload's table, HA candidates streaming from it, a relay (or a chain of
//! relays) in front of them, standbys and pg_receivewal streaming through the last relay, and
//! rows that every candidate and standby has.
//!
//! ```ignore
//! let Topology { mut primary, candidates: [mut ha], relays: [mut relay], standbys: [standby1], .. } =
//!     Topology::primary_relay_standby()
//!         .candidates(["ha"])
//!         .failover_standby("ha")
//!         .rows(1..=500)
//!         .start();
//! ```
//!
//! How many candidates, relays, standbys and pg_receivewals there are is part of the type
//! (arrays), so that a test takes the parts apart by pattern and names them. Bind every part the
//! test uses: a part left to `..` is dropped, and so stopped, at the end of that `let`.
//!
//! Everything is started in this order, each part ready before the next: primary (then the
//! [`Builder::on_primary`] steps), candidates (each then the [`Builder::on_candidates`] steps),
//! the relays (the first waits for its `--failover-standby` to be confirmed), standbys,
//! pg_receivewal (streaming), rows.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::{workload, PgCluster, ReceiveWal, Relay};

/// A running topology; see the module doc.
pub struct Topology<const C: usize, const R: usize, const S: usize, const W: usize> {
    /// `primary`, with the workload's table `t`.
    pub primary: PgCluster,
    /// HA standbys streaming directly from the primary (as `application_name` = their name),
    /// listed after it, in this order, in the first relay's conninfo.
    pub candidates: [PgCluster; C],
    /// A chain: the first streams from the primary (and finds the new one among the
    /// candidates), each next one from the one before.
    pub relays: [Relay; R],
    /// Standbys made from the primary with pg_basebackup, streaming from the last relay.
    pub standbys: [PgCluster; S],
    /// pg_receivewal from the last relay, streaming.
    pub receivers: [ReceiveWal; W],
}

impl Topology<0, 1, 0, 0> {
    /// A primary and a relay (slot `relay`) in front of it.
    pub fn primary_relay() -> Builder<0, 1, 0, 0> {
        Builder {
            settings: Settings::default(),
            candidates: [],
            relays: ["relay"],
            standbys: [],
            receivers: [],
        }
    }
}

impl Topology<0, 1, 1, 0> {
    /// A primary, a relay (slot `relay`) and a standby `standby1` streaming through it.
    pub fn primary_relay_standby() -> Builder<0, 1, 1, 0> {
        Topology::primary_relay().standbys(["standby1"])
    }
}

/// What a [`Topology`] is made of; [`Builder::start`] makes it.
#[must_use = "a topology starts with .start()"]
pub struct Builder<const C: usize, const R: usize, const S: usize, const W: usize> {
    settings: Settings,
    candidates: [&'static str; C],
    relays: [&'static str; R],
    standbys: [&'static str; S],
    receivers: [(); W],
}

#[derive(Default)]
struct Settings {
    on_primary: Vec<fn(&PgCluster)>,
    on_candidates: Vec<fn(&PgCluster)>,
    relay_args: Vec<String>,
    failover_standby: Option<&'static str>,
    replicator: Option<Replicator>,
    relay_data_dir: Option<PathBuf>,
    rows: Option<RangeInclusive<u32>>,
}

/// The relay's upstream role when it is not the superuser: `replicator`, LOGIN REPLICATION.
struct Replicator {
    read_all_stats: bool,
}

impl<const C: usize, const R: usize, const S: usize, const W: usize> Builder<C, R, S, W> {
    /// HA candidates with these names (plain identifiers).
    pub fn candidates<const N: usize>(self, names: [&'static str; N]) -> Builder<N, R, S, W> {
        Builder {
            settings: self.settings,
            candidates: names,
            relays: self.relays,
            standbys: self.standbys,
            receivers: self.receivers,
        }
    }

    /// A chain of relays with these slot names (instead of the one relay with slot `relay`).
    /// The second streams from the first with `target_session_attrs=any`, and so on.
    pub fn relays<const N: usize>(self, slots: [&'static str; N]) -> Builder<C, N, S, W> {
        Builder {
            settings: self.settings,
            candidates: self.candidates,
            relays: slots,
            standbys: self.standbys,
            receivers: self.receivers,
        }
    }

    /// Standbys with these names (plain identifiers: their `application_name`).
    pub fn standbys<const N: usize>(self, names: [&'static str; N]) -> Builder<C, R, N, W> {
        Builder {
            settings: self.settings,
            candidates: self.candidates,
            relays: self.relays,
            standbys: names,
            receivers: self.receivers,
        }
    }

    /// A pg_receivewal streaming from the last relay (no slot).
    pub fn receivewal(self) -> Builder<C, R, S, 1> {
        Builder {
            settings: self.settings,
            candidates: self.candidates,
            relays: self.relays,
            standbys: self.standbys,
            receivers: [()],
        }
    }

    /// Runs `step` on the primary right after it is made (e.g. [`PgCluster::pin_wal`]).
    pub fn on_primary(mut self, step: fn(&PgCluster)) -> Self {
        self.settings.on_primary.push(step);
        self
    }

    /// Runs `step` on each candidate right after it streams, before any relay starts.
    pub fn on_candidates(mut self, step: fn(&PgCluster)) -> Self {
        self.settings.on_candidates.push(step);
        self
    }

    /// Further `walrelay run` flags for the first relay (kept for its restarts).
    pub fn relay_args(mut self, args: &[&str]) -> Self {
        self.settings
            .relay_args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--failover-standby NAME` for the first relay, which then waits until `/status` shows
    /// that candidate confirmed on the primary.
    pub fn failover_standby(mut self, name: &'static str) -> Self {
        self.settings.failover_standby = Some(name);
        self.relay_args(&["--failover-standby", name])
    }

    /// The first relay connects as `replicator` (LOGIN REPLICATION, made on the primary after
    /// the candidates), granted `pg_read_all_stats` or not, as operators create the role.
    pub fn replicator_role(mut self, read_all_stats: bool) -> Self {
        self.settings.replicator = Some(Replicator { read_all_stats });
        self
    }

    /// The first relay's data dir is `dir` (e.g. on a [`SmallFs`](super::crash::SmallFs)),
    /// which must exist; see [`Relay::start_in`].
    pub fn relay_data_dir(mut self, dir: &Path) -> Self {
        self.settings.relay_data_dir = Some(dir.to_path_buf());
        self
    }

    /// Last, inserts these rows on the primary and waits until every candidate and standby
    /// has exactly the primary's rows.
    pub fn rows(mut self, ids: RangeInclusive<u32>) -> Self {
        self.settings.rows = Some(ids);
        self
    }

    /// Starts everything, in the order the module doc gives.
    pub fn start(self) -> Topology<C, R, S, W> {
        let settings = self.settings;
        let primary = PgCluster::init_primary("primary");
        workload::create_table(&primary);
        for step in &settings.on_primary {
            step(&primary);
        }
        let candidates = self.candidates.map(|name| {
            let candidate = PgCluster::ha_standby(&primary, name);
            for step in &settings.on_candidates {
                step(&candidate);
            }
            candidate
        });

        let user = match &settings.replicator {
            Some(role) => {
                primary.psql("create role replicator with login replication");
                if role.read_all_stats {
                    primary.psql("grant pg_read_all_stats to replicator");
                }
                "replicator"
            }
            None => "postgres",
        };
        let mut upstream = if candidates.is_empty() && user == "postgres" {
            primary.conninfo()
        } else {
            let servers: Vec<&PgCluster> = std::iter::once(&primary).chain(&candidates).collect();
            read_write_hosts_as(&servers, user)
        };
        let mut first = true;
        let relays = self.relays.map(|slot| {
            let mut relay = if first {
                let args: Vec<&str> = settings.relay_args.iter().map(String::as_str).collect();
                match &settings.relay_data_dir {
                    Some(dir) => Relay::start_in(dir, &upstream, slot, &args),
                    None => Relay::start_with(&upstream, slot, &args),
                }
            } else {
                Relay::start(&upstream, slot)
            };
            relay.wait_ready();
            if let (true, Some(name)) = (first, settings.failover_standby) {
                relay.wait_status(
                    &format!("failover standby {name} confirmed on the primary"),
                    |s| {
                        s["failover"]["standbys"][0]["application_name"] == name
                            && s["failover"]["standbys"][0]["state"] == "confirmed"
                    },
                );
            }
            first = false;
            upstream = format!(
                "host=127.0.0.1 port={} user=postgres target_session_attrs=any",
                relay.port()
            );
            relay
        });
        let port = relays
            .last()
            .map(Relay::port)
            .unwrap_or_else(|| panic!("a topology has at least one relay"));

        let standbys = self
            .standbys
            .map(|name| PgCluster::basebackup_standby(&primary, name, port));
        let receivers = self.receivers.map(|()| {
            let receiver = ReceiveWal::start(port);
            receiver.wait_streaming();
            receiver
        });
        if let Some(ids) = settings.rows {
            workload::insert_rows(&primary, ids);
            for server in candidates.iter().chain(&standbys) {
                workload::wait_rows(&primary, server);
            }
        }
        Topology {
            primary,
            candidates,
            relays,
            standbys,
            receivers,
        }
    }
}

/// A conninfo listing `servers` in this order that accepts only a writable server, as an
/// operator configures a relay in front of a primary and its HA standbys.
pub fn read_write_hosts(servers: &[&PgCluster]) -> String {
    read_write_hosts_as(servers, "postgres")
}

fn read_write_hosts_as(servers: &[&PgCluster], user: &str) -> String {
    let hosts: Vec<&str> = servers.iter().map(|_| "127.0.0.1").collect();
    let ports: Vec<String> = servers.iter().map(|s| s.port().to_string()).collect();
    format!(
        "host={} port={} user={user} target_session_attrs=read-write",
        hosts.join(","),
        ports.join(",")
    )
}
