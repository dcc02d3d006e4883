//! Connection tests against a scripted fake walsender on loopback: cancel safety of
//! `recv_copy` under a fast timer with the server dribbling bytes, the end-of-timeline exchange
//! (server CopyDone, next-timeline result set) and the shutdown `COPY 0`, which a single real
//! server cannot easily produce on demand.

use super::*;
use crate::proto::backend;
use crate::proto::replication::encode_xlog_data_frame;
use crate::proto::split_message;
use bytes::BytesMut;
use tokio::net::TcpListener;

#[test]
fn next_timeline_row() {
    let rows = vec![vec![Some("2".to_string()), Some("0/304AC00".to_string())]];
    assert_eq!(parse_next_timeline(&rows).unwrap(), (2, Lsn(0x304AC00)));
    assert!(parse_next_timeline(&vec![]).is_err());
    assert!(parse_next_timeline(&vec![vec![Some("2".into())]]).is_err());
    assert!(parse_next_timeline(&vec![vec![None, Some("0/1".into())]]).is_err());
    assert!(parse_next_timeline(&vec![vec![Some("x".into()), Some("0/1".into())]]).is_err());
}

/// The server side of the fake: reads whole client messages.
struct Peer {
    sock: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (sock, _) = listener.accept().await.unwrap();
        Peer {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// The StartupMessage parameters.
    async fn startup(&mut self) -> Vec<(String, String)> {
        loop {
            if let Some(pkt) = crate::proto::split_startup_packet(&mut self.buf).unwrap() {
                match crate::proto::frontend::parse_startup_packet(&pkt).unwrap() {
                    crate::proto::frontend::StartupPacket::Startup { params, .. } => return params,
                    other => panic!("{other:?}"),
                }
            }
            assert!(self.sock.read_buf(&mut self.buf).await.unwrap() > 0);
        }
    }

    async fn message(&mut self) -> crate::proto::RawMessage {
        loop {
            if let Some(m) = split_message(&mut self.buf).unwrap() {
                return m;
            }
            assert!(
                self.sock.read_buf(&mut self.buf).await.unwrap() > 0,
                "client closed"
            );
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.sock.write_all(b).await.unwrap();
    }

    /// Sends in 7-byte pieces with pauses, so messages arrive torn across many reads.
    async fn dribble(&mut self, b: &[u8]) {
        self.sock.set_nodelay(true).unwrap();
        for (i, piece) in b.chunks(7).enumerate() {
            self.sock.write_all(piece).await.unwrap();
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
        }
    }

    /// Trust auth and the usual ParameterStatus set.
    async fn handshake(&mut self) {
        let params = self.startup().await;
        assert!(
            params.contains(&("replication".into(), "true".into())),
            "{params:?}"
        );
        assert!(
            params.contains(&("database".into(), "replication".into())),
            "{params:?}"
        );
        let mut b = BytesMut::new();
        backend::authentication_ok(&mut b);
        backend::parameter_status(&mut b, "server_version", "15.18");
        backend::parameter_status(&mut b, "in_hot_standby", "off");
        backend::backend_key_data(&mut b, 4242, 7);
        backend::ready_for_query(&mut b);
        self.send(&b).await;
    }
}

async fn fake_server() -> (TcpListener, ConnInfo) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ci = ConnInfo::parse_with_env(
        &format!("host=127.0.0.1 port={port} user=u sslmode=disable"),
        |_| None,
    )
    .unwrap();
    (listener, ci)
}

const CHUNKS: u64 = 40;
const CHUNK_LEN: usize = 300;

fn chunk_data(i: u64) -> Vec<u8> {
    (0..CHUNK_LEN)
        .map(|j| (i as usize * 31 + j) as u8)
        .collect()
}

#[tokio::test]
async fn recv_copy_is_cancel_safe_and_timeline_end_is_read() {
    let (listener, ci) = fake_server().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.handshake().await;
        let q = p.message().await;
        assert_eq!(q.tag, b'Q');
        assert_eq!(&q.body[..], b"START_REPLICATION 0/3000000 TIMELINE 1\0");
        let mut b = BytesMut::new();
        backend::copy_both_response(&mut b);
        for i in 0..CHUNKS {
            let start = Lsn(0x300_0000 + i * CHUNK_LEN as u64);
            encode_xlog_data_frame(&mut b, start, Lsn(0x304_AC00), &chunk_data(i));
            if i == 10 {
                // Folded into the connection's state, never surfaced as events.
                backend::parameter_status(&mut b, "in_hot_standby", "on");
                crate::proto::error::PgError {
                    severity: crate::proto::error::Severity::Notice,
                    code: "00000",
                    message: "hello".into(),
                    detail: None,
                    hint: None,
                }
                .encode(&mut b);
            }
        }
        backend::copy_done(&mut b);
        p.dribble(&b).await;
        // The client's status updates, then its CopyDone.
        loop {
            let m = p.message().await;
            match m.tag {
                b'd' => assert_eq!(m.body.first(), Some(&b'r')),
                b'c' => break,
                t => panic!("unexpected client message {t}"),
            }
        }
        let mut b = BytesMut::new();
        backend::row_description(
            &mut b,
            &[
                backend::Column::int8("next_tli"),
                backend::Column::text("next_tli_startpos"),
            ],
        );
        backend::data_row(&mut b, &[Some(b"2"), Some(b"0/304AC00")]);
        backend::command_complete(&mut b, "START_STREAMING");
        backend::command_complete(&mut b, "START_REPLICATION");
        backend::ready_for_query(&mut b);
        p.send(&b).await;
        assert_eq!(p.message().await.tag, b'X');
    });

    let mut c = connect(&ci, 0, "t").await.unwrap();
    assert_eq!(c.backend_key(), Some((4242, 7)));
    assert_eq!(c.server_version(), Some("15.18"));
    let outcome = c
        .start_copy_both("START_REPLICATION 0/3000000 TIMELINE 1")
        .await
        .unwrap();
    assert_eq!(outcome, StartOutcome::CopyBoth);

    let mut received = 0u64;
    let mut cancelled = 0u32;
    let mut tick = tokio::time::interval(Duration::from_micros(100));
    loop {
        tokio::select! {
            ev = c.recv_copy() => match ev.unwrap() {
                CopyEvent::Data(payload) => {
                    let crate::proto::replication::ServerCopyMessage::XLogData(x) =
                        crate::proto::replication::parse_server_copy(&payload).unwrap()
                    else {
                        panic!("keepalive not sent by this server");
                    };
                    assert_eq!(x.start, Lsn(0x300_0000 + received * CHUNK_LEN as u64));
                    assert_eq!(x.data, &chunk_data(received)[..]);
                    received += 1;
                }
                CopyEvent::Done => break,
                other => panic!("{other:?}"),
            },
            _ = tick.tick() => {
                cancelled += 1;
                if cancelled.is_multiple_of(50) {
                    let mut b = BytesMut::new();
                    crate::proto::replication::StandbyStatus {
                        write: Lsn(1), flush: Lsn(1), apply: Lsn(0), client_time: 0, reply_requested: false,
                    }
                    .encode_payload(&mut b);
                    c.send_copy_data(&b).await.unwrap();
                }
            }
        }
    }
    assert_eq!(received, CHUNKS);
    assert!(
        cancelled > 50,
        "the timer should have interrupted recv_copy often ({cancelled})"
    );
    assert_eq!(
        c.params().get("in_hot_standby").map(String::as_str),
        Some("on")
    );
    // Server CopyDone came first; recv_copy refuses to read past it.
    assert!(matches!(
        c.recv_copy().await,
        Err(UpstreamError::Protocol(_))
    ));
    let rows = c.finish_copy().await.unwrap();
    assert_eq!(parse_next_timeline(&rows).unwrap(), (2, Lsn(0x304_AC00)));
    assert!(c.is_ready());
    c.terminate().await;
    server.await.unwrap();
}

#[tokio::test]
async fn shutdown_copy_0_then_close() {
    let (listener, ci) = fake_server().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.handshake().await;
        p.message().await;
        let mut b = BytesMut::new();
        backend::copy_both_response(&mut b);
        backend::command_complete(&mut b, "COPY 0");
        p.send(&b).await;
        // The walsender exits without ReadyForQuery.
    });
    let mut c = connect(&ci, 0, "t").await.unwrap();
    assert_eq!(
        c.start_copy_both("START_REPLICATION 0/0").await.unwrap(),
        StartOutcome::CopyBoth
    );
    assert_eq!(
        c.recv_copy().await.unwrap(),
        CopyEvent::CommandComplete("COPY 0".into())
    );
    server.await.unwrap();
    assert!(matches!(c.recv_copy().await, Err(UpstreamError::Closed)));
    assert!(matches!(
        c.simple_query("IDENTIFY_SYSTEM").await,
        Err(UpstreamError::Broken)
    ));
}

#[tokio::test]
async fn garbage_from_server_is_a_protocol_error() {
    let (listener, ci) = fake_server().await;
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.startup().await;
        // A negative length word.
        p.send(b"R\xff\xff\xff\xff").await;
        let _ = p.sock.read_buf(&mut p.buf).await;
    });
    match connect(&ci, 0, "t").await {
        Err(e @ UpstreamError::Protocol(_)) => assert!(e.is_transient()),
        other => panic!("{:?}", other.map(|_| ())),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn ssl_refused_when_required() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = [0u8; 8];
        sock.read_exact(&mut req).await.unwrap();
        assert_eq!(req, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        sock.write_all(b"N").await.unwrap();
        let _ = sock.read_u8().await;
    });
    let ci = ConnInfo::parse_with_env(
        &format!("host=127.0.0.1 port={port} user=u sslmode=require"),
        |_| None,
    )
    .unwrap();
    let e = connect(&ci, 0, "t").await.err().unwrap();
    assert!(matches!(e, UpstreamError::SslNotSupported), "{e:?}");
    assert_eq!(
        e.to_string(),
        "server does not support SSL, but SSL was required"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn connect_timeout_expires() {
    // A listener that never answers the startup message.
    let (listener, _) = fake_server().await;
    let port = listener.local_addr().unwrap().port();
    let ci = ConnInfo::parse_with_env(
        &format!("host=127.0.0.1 port={port} user=u sslmode=disable connect_timeout=1"),
        |_| None,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = connect(&ci, 0, "t").await.err().unwrap();
    assert!(matches!(e, UpstreamError::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

/// The first host authenticates and then never answers a query; with no `connect_timeout` in
/// the conninfo the relay's default would apply, here 1 s keeps the test short. The relay gives
/// the first host up and connects to the second.
#[tokio::test]
async fn a_host_that_stops_answering_after_authentication_is_skipped() {
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ci = ConnInfo::parse_with_env(
        &format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=u sslmode=disable connect_timeout=1",
            hung.local_addr().unwrap().port(),
            good.local_addr().unwrap().port()
        ),
        |_| None,
    )
    .unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let hung_server = tokio::spawn(async move {
        let mut p = Peer::accept(&hung).await;
        p.handshake().await;
        let q = p.message().await;
        let _ = seen_tx.send((q.tag, q.body.to_vec()));
        // Holds the connection open, answering nothing, until the client gives up.
        let mut rest = [0u8; 64];
        while p.sock.read(&mut rest).await.is_ok_and(|n| n > 0) {}
    });
    let good_server = tokio::spawn(async move {
        let mut p = Peer::accept(&good).await;
        p.handshake().await;
        let q = p.message().await;
        assert_eq!(&q.body[..], b"IDENTIFY_SYSTEM\0");
        let mut b = BytesMut::new();
        backend::row_description(
            &mut b,
            &[
                backend::Column::text("systemid"),
                backend::Column::int4("timeline"),
                backend::Column::text("xlogpos"),
                backend::Column::text("dbname"),
            ],
        );
        backend::data_row(&mut b, &[Some(b"7"), Some(b"1"), Some(b"0/3000000"), None]);
        backend::command_complete(&mut b, "IDENTIFY_SYSTEM");
        backend::ready_for_query(&mut b);
        p.send(&b).await;
        let _ = p.message().await;
    });
    let conn = crate::upstream::connect_any(&ci, "t", None).await.unwrap();
    assert_eq!(
        conn.host().port,
        ci.hosts[1].port,
        "connected to the second host"
    );
    let (tag, body) = seen_rx.await.unwrap();
    assert_eq!((tag, &body[..]), (b'Q', &b"IDENTIFY_SYSTEM\0"[..]));
    conn.terminate().await;
    hung_server.await.unwrap();
    good_server.await.unwrap();
}

#[tokio::test]
async fn a_query_without_an_answer_times_out_and_breaks_the_connection() {
    let (listener, mut ci) = fake_server().await;
    ci.connect_timeout = Some(Duration::from_millis(300));
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.handshake().await;
        p.message().await;
        let mut rest = [0u8; 64];
        while p.sock.read(&mut rest).await.is_ok_and(|n| n > 0) {}
    });
    let mut c = connect(&ci, 0, "t").await.unwrap();
    let e = c.simple_query("IDENTIFY_SYSTEM").await.unwrap_err();
    assert!(matches!(e, UpstreamError::QueryTimeout { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(
        e.to_string(),
        format!(
            "server at \"127.0.0.1\" (127.0.0.1), port {} did not answer IDENTIFY_SYSTEM within connect_timeout",
            ci.hosts[0].port
        )
    );
    assert!(matches!(
        c.simple_query("IDENTIFY_SYSTEM").await,
        Err(UpstreamError::Broken)
    ));
    drop(c);
    server.await.unwrap();
}

#[tokio::test]
async fn a_query_read_as_it_arrives_surfaces_notices_then_its_end() {
    use crate::proto::error::{PgError, Severity};
    let (listener, ci) = fake_server().await;
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut p = Peer::accept(&listener).await;
        p.handshake().await;
        assert_eq!(p.message().await.tag, b'Q');
        let notice = |m: &str| {
            let mut b = BytesMut::new();
            PgError {
                severity: Severity::Notice,
                code: "00000",
                message: m.into(),
                detail: None,
                hint: None,
            }
            .encode(&mut b);
            b
        };
        // The first notice alone: the client must see it before the statement ends.
        p.send(&notice("one")).await;
        go_rx.await.unwrap();
        let mut b = notice("two");
        backend::command_complete(&mut b, "DO");
        backend::ready_for_query(&mut b);
        p.send(&b).await;
        // A second query that fails: an ERROR, then ReadyForQuery.
        assert_eq!(p.message().await.tag, b'Q');
        let mut b = BytesMut::new();
        PgError::error("57014", "canceling statement due to user request").encode(&mut b);
        backend::ready_for_query(&mut b);
        p.send(&b).await;
        p.message().await
    });
    let mut c = connect(&ci, 0, "t").await.unwrap();
    let token = c.cancel_token().unwrap();
    assert_eq!((token.pid, token.key), (4242, 7));
    c.send_simple_query("DO $$ … $$").await.unwrap();
    assert!(!c.is_ready());
    assert!(matches!(
        c.simple_query("SELECT 1").await,
        Err(UpstreamError::Protocol(_))
    ));
    // Cancel-safe: a timer that fires first loses nothing.
    let first = loop {
        tokio::select! {
            ev = c.recv_query_event() => break ev.unwrap(),
            _ = tokio::time::sleep(Duration::from_micros(10)) => {}
        }
    };
    match first {
        QueryEvent::Notice(n) => {
            assert_eq!((n.severity.as_str(), n.message.as_str()), ("NOTICE", "one"))
        }
        other => panic!("{other:?}"),
    }
    go_tx.send(()).unwrap();
    match c.recv_query_event().await.unwrap() {
        QueryEvent::Notice(n) => assert_eq!(n.message, "two"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv_query_event().await.unwrap(), QueryEvent::Done);
    assert!(c.is_ready());
    c.send_simple_query("DO $$ … $$").await.unwrap();
    match c.recv_query_event().await {
        Err(UpstreamError::Server(e)) => assert_eq!(e.code, "57014"),
        other => panic!("{other:?}"),
    }
    assert!(c.is_ready(), "an ERROR leaves the connection usable");
    c.terminate().await;
    assert_eq!(server.await.unwrap().tag, b'X');
}

#[tokio::test]
async fn cancel_token_sends_postgres_cancel_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = CancelToken {
        addr: listener.local_addr().unwrap(),
        pid: 4242,
        key: 7,
    };
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 16];
        sock.read_exact(&mut b).await.unwrap();
        b
        // Dropped: closed, as the postmaster does.
    });
    token.cancel(Duration::from_secs(5)).await.unwrap();
    let b = server.await.unwrap();
    // Length 16, code 80877102, pid, key.
    assert_eq!(&b[..4], &16i32.to_be_bytes());
    assert_eq!(&b[4..8], &80877102i32.to_be_bytes());
    assert_eq!(&b[8..12], &4242i32.to_be_bytes());
    assert_eq!(&b[12..], &7i32.to_be_bytes());
}
