//! Connection limits and timeouts with real clients: `--max-connections` refuses the client
//! past it with PostgreSQL's `53300` while the others keep streaming; `--authentication-timeout`
//! closes sockets that never finish their startup; `--wal-sender-timeout` drops replicas that
//! stop replying or stop reading, releasing their slot, while a real standby streams on.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::pg::psql;
use crate::harness::wire::{RawOutcome, ReplClient, WireError};
use crate::harness::{wait_until, workload, ReceiveWal, Relay, Topology};

/// Downstreams `/status` lists as streaming.
fn streaming(relay: &Relay) -> Vec<String> {
    relay
        .status()
        .pointer("/downstreams")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|d| d["state"] == "streaming")
                .map(|d| d["application_name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_streaming_count(relay: &Relay, n: usize) {
    wait_until(&format!("{n} downstreams streaming"), || {
        let names = streaming(relay);
        if names.len() == n {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    });
}

#[test]
fn the_client_past_max_connections_gets_53300_and_the_others_stream_on() {
    let Topology {
        primary,
        relays: [relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&["--max-connections", "5"])
        .rows(1..=100)
        .start();
    let walreceiver = standby.psql("select pid from pg_stat_wal_receiver");
    // Four pg_receivewal beside the standby: five replication connections.
    let mut receivers: Vec<ReceiveWal> = (0..4).map(|_| ReceiveWal::start(relay.port())).collect();
    for r in &receivers {
        r.wait_streaming();
    }
    wait_streaming_count(&relay, 5);

    match ReplClient::connect(relay.port(), "sixth") {
        Err(WireError::Server(e)) => {
            assert_eq!(e.code(), "53300", "{e}");
            assert_eq!(e.severity(), "FATAL", "{e}");
            assert_eq!(e.message(), "sorry, too many clients already");
        }
        Err(e) => panic!("the sixth client: expected 53300, got {e}"),
        Ok(_) => panic!("the sixth client was accepted past --max-connections 5"),
    }
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres replication=true",
        relay.port()
    );
    match psql(&conninfo, "IDENTIFY_SYSTEM") {
        Ok(out) => panic!("psql got in past --max-connections 5: {out}"),
        Err(stderr) => assert!(
            stderr.contains("sorry, too many clients already"),
            "psql said: {stderr}"
        ),
    }

    // The five noticed nothing: rows arrive on the standby, the receivers stream on.
    workload::insert_rows(&primary, 101..=2000);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select pid from pg_stat_wal_receiver"),
        walreceiver,
        "the standby's walreceiver reconnected"
    );
    for r in &mut receivers {
        r.assert_running();
        assert!(
            r.errors().is_empty(),
            "pg_receivewal errors: {:?}",
            r.errors()
        );
    }
    wait_streaming_count(&relay, 5);

    // A slot freed is a slot for the next client.
    drop(receivers.pop());
    wait_streaming_count(&relay, 4);
    let mut client = wait_until("a connection after one client left", || {
        ReplClient::connect(relay.port(), "next").map_err(|e| e.to_string())
    });
    let reply = client.query("IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    assert_eq!(reply.error, None);
}

pub(crate) fn connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(crate::harness::WAIT))
        .expect("read timeout");
    s
}

/// Reads until the relay closes the connection; the bytes it sent.
pub(crate) fn read_until_closed(mut s: TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("{what}: the relay did not close the connection: {e}"),
    }
}

/// `START_REPLICATION` on a fresh connection at the relay's current end; returns the socket
/// once the stream has begun.
pub(crate) fn start_streaming(port: u16, application_name: &str, slot: Option<&str>) -> TcpStream {
    let mut client = ReplClient::connect(port, application_name).expect("replication connection");
    let ident = client.query("IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    let row = ident.rows.first().expect("a row");
    let tli = row[1].clone().expect("timeline");
    let pos = row[2].clone().expect("xlogpos");
    let slot = slot.map(|s| format!("SLOT {s} ")).unwrap_or_default();
    let reply = client
        .query(&format!(
            "START_REPLICATION {slot}PHYSICAL {pos} TIMELINE {tli}"
        ))
        .expect("START_REPLICATION reply");
    assert_eq!(reply.error, None, "START_REPLICATION failed");
    assert!(reply.copy_both, "no CopyBothResponse");
    client.into_stream()
}

/// A standby status update (`r`) in a CopyData message, all positions 0/0.
pub(crate) fn status_update() -> Vec<u8> {
    let mut payload = vec![b'r'];
    payload.extend_from_slice(&[0u8; 32]);
    payload.push(0);
    let mut msg = vec![b'd'];
    msg.extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&payload);
    msg
}

#[test]
fn silent_and_stuck_clients_are_closed_and_the_standby_streams_on() {
    let Topology {
        primary,
        relays: [relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&[
            "--authentication-timeout",
            "2s",
            "--wal-sender-timeout",
            "5s",
        ])
        .rows(1..=100)
        .start();
    let walreceiver = standby.psql("select pid from pg_stat_wal_receiver");

    // Sockets that say nothing, or half a startup packet, are closed, with nothing said.
    let idle = connect(relay.port());
    let mut half = connect(relay.port());
    half.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u'])
        .expect("write half a startup packet");
    assert_eq!(read_until_closed(idle, "an idle socket"), b"");
    assert_eq!(read_until_closed(half, "half a startup packet"), b"");
    relay.wait_for_log("not finished within authentication_timeout");

    // A command far past what a replication client sends is refused before it arrives whole
    // (the error may be lost to the reset of a close with unread bytes: closed is fine too).
    let client = ReplClient::connect(relay.port(), "big").expect("replication connection");
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&(100_004u32).to_be_bytes());
    msg.extend_from_slice(&[b' '; 99_999]);
    msg.push(0);
    match client.send_raw(&msg) {
        Ok(RawOutcome::Error(e)) => assert_eq!(e.code(), "08P01", "{e}"),
        Ok(RawOutcome::Closed) => {}
        other => panic!("a 100 kB command: expected 08P01, got {other:?}"),
    }

    // A replica on a relay slot that never reads nor replies, and one that replies but never
    // reads, while plenty of WAL is written.
    relay.create_slot("stuck");
    let silent = start_streaming(relay.port(), "silent", Some("stuck"));
    let replying = start_streaming(relay.port(), "replying", None);
    let mut writer = replying.try_clone().expect("clone socket");
    let replies = thread::spawn(move || {
        while writer.write_all(&status_update()).is_ok() {
            thread::sleep(Duration::from_millis(500));
        }
    });
    for batch in 0..5u32 {
        workload::insert_rows(
            &primary,
            1001 + batch * 50_000..=(batch + 1) * 50_000 + 1000,
        );
    }
    for name in ["silent", "replying"] {
        relay.wait_for_replica_dropped(name);
    }
    wait_until("the dropped replicas to leave /status", || {
        let names = streaming(&relay);
        if names.iter().any(|n| n == "silent" || n == "replying") {
            Err(format!("{names:?}"))
        } else {
            Ok(())
        }
    });
    // Its slot was released: another client can stream from it.
    let again = start_streaming(relay.port(), "again", Some("stuck"));
    drop(again);
    drop(silent);
    drop(replying);
    let _ = replies.join();

    // The standby streamed all along and has every row.
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select pid from pg_stat_wal_receiver"),
        walreceiver,
        "the standby's walreceiver reconnected"
    );
    let dropped = relay
        .log()
        .lines()
        .filter(|l| l.contains("due to replication timeout"))
        .count();
    assert_eq!(dropped, 2, "each dropped replica is logged once");
}

/// `--max-replication-slots 2`: a third relay slot gets PostgreSQL's `53400`, from psql and on
/// the wire, while the standby streams on; a dropped slot makes room. A relay restarted with
/// fewer allowed than it stores refuses to start, as PostgreSQL does.
#[test]
fn the_slot_past_max_replication_slots_gets_53400() {
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&["--max-replication-slots", "2"])
        .rows(1..=100)
        .start();
    let walreceiver = standby.psql("select pid from pg_stat_wal_receiver");
    relay.create_slot("first");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres replication=true",
        relay.port()
    );
    psql(&conninfo, "CREATE_REPLICATION_SLOT second PHYSICAL").expect("the second slot");
    match psql(&conninfo, "CREATE_REPLICATION_SLOT third PHYSICAL") {
        Ok(out) => panic!("a third slot past --max-replication-slots 2: {out}"),
        Err(stderr) => assert!(
            stderr.contains("ERROR:  all replication slots are in use")
                && stderr.contains("HINT:  Free one or increase max_replication_slots."),
            "psql said: {stderr}"
        ),
    }
    let mut client = ReplClient::connect(relay.port(), "slot_admin").expect("connect");
    let reply = client
        .query("CREATE_REPLICATION_SLOT third PHYSICAL RESERVE_WAL")
        .expect("reply");
    let e = reply.error.expect("an error for the third slot");
    assert_eq!((e.severity(), e.code()), ("ERROR", "53400"), "{e}");
    assert_eq!(e.hint(), "Free one or increase max_replication_slots.");
    // The session goes on: drop one, and the third fits.
    let reply = client.query("DROP_REPLICATION_SLOT second").expect("drop");
    assert_eq!(reply.error, None);
    let reply = client
        .query("CREATE_REPLICATION_SLOT third PHYSICAL RESERVE_WAL")
        .expect("reply");
    assert_eq!(reply.error, None);
    drop(client);

    workload::insert_rows(&primary, 101..=1000);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select pid from pg_stat_wal_receiver"),
        walreceiver,
        "the standby's walreceiver reconnected"
    );

    // Two slots stored, one allowed: the relay refuses to start and says why.
    assert!(relay.stop().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["run", "--upstream", &primary.conninfo(), "--data-dir"])
        .arg(relay.data_dir())
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--max-replication-slots", "1"])
        .output()
        .expect("run walrelay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with 2 slots stored: {stderr}"
    );
    assert!(
        stderr.contains(
            "too many replication slots active before shutdown: 2 stored, max_replication_slots is 1"
        ),
        "{stderr}"
    );
}
