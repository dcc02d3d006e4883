//! Downstream access with real clients: a PostgreSQL 15 standby streaming through the relay over
//! TLS (`sslmode=verify-full`) with SCRAM-SHA-256-PLUS, psql with `channel_binding=require`, a
//! verifier copied from the primary's `pg_authid`, and the refusals PostgreSQL words: a wrong
//! password (28P01), a `reject` line and a plaintext client where only `hostssl` lines match
//! (28000). Direct TLS (PostgreSQL 17's `sslnegotiation=direct`) with a rustls client, since
//! the harness's libpq is 15's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::pg::psql;
use crate::harness::tls::TestCerts;
use crate::harness::wire::{send_raw, RawOutcome};
use crate::harness::{os, workload, PgCluster, Relay, Topology};

const HBA: &str = "\
# downstream rules of the access test
host      replication bad     127.0.0.1/32  reject
hostssl   replication direct  127.0.0.1/32  trust
hostssl   replication all     127.0.0.1/32  scram-sha-256
";

/// `walrelay passwd --user NAME` with `password` on stdin: its one output line.
pub(crate) fn passwd_line(user: &str, password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["passwd", "--user", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run walrelay passwd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "walrelay passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "walrelay passwd printed {text:?}");
    let line = lines[0].to_string();
    assert!(
        line.starts_with(&format!("\"{user}\" \"SCRAM-SHA-256$4096:")) && line.ends_with('"'),
        "{line}"
    );
    line
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).unwrap();
    path
}

fn conninfo(relay: &Relay, rest: &str) -> String {
    format!(
        "host=127.0.0.1 port={} replication=true connect_timeout=20 {rest}",
        relay.port()
    )
}

#[test]
fn access_tls_scram_standby_psql_and_refusals() {
    let certs = TestCerts::new();
    let hba = write(certs.dir().join("relay_hba.conf"), HBA);
    // One user from `walrelay passwd --user`, one verifier copied from the primary (below).
    let mut users = passwd_line("rep", "s3cretpw");
    users.push('\n');
    let auth = certs.dir().join("userlist.txt");
    let cert = certs.server_cert();
    let key = certs.server_key();

    // The relay needs the auth file at start: make the primary first, copy its verifier, then
    // start the relay in front of it.
    let primary_only = Topology::primary_relay()
        .relay_args(&["--hba-file", hba.to_str().unwrap()])
        .start();
    let Topology {
        primary,
        relays: [plain_relay],
        ..
    } = primary_only;
    primary.psql("create role copied login replication password 'copied pw'");
    let verifier = primary.psql("select rolpassword from pg_authid where rolname = 'copied'");
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    users.push_str(&format!("\"copied\" \"{verifier}\"\n"));
    write(auth.clone(), &users);

    // Without TLS, only hostssl lines match the SCRAM user: a plaintext refusal in
    // PostgreSQL's words, and an SSLRequest is answered N (sslmode=require fails).
    let e = psql(
        &conninfo(&plain_relay, "user=rep password=x sslmode=disable"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"rep\", no encryption"),
        "{e}"
    );
    let e = psql(
        &conninfo(&plain_relay, "user=rep password=x sslmode=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(e.contains("server does not support SSL"), "{e}");
    drop(plain_relay);

    let mut relay = Relay::start_with(
        &primary.conninfo(),
        "relay_tls",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--hba-file",
            hba.to_str().unwrap(),
            "--auth-file",
            auth.to_str().unwrap(),
        ],
    );
    relay.wait_ready();
    relay.wait_for_log("downstream TLS enabled");

    // A standby over TLS, verifying the relay's certificate, with a password.
    let standby = PgCluster::basebackup_standby_to(
        &primary,
        "standby1",
        &format!(
            "host=127.0.0.1 port={} user=rep password=s3cretpw sslmode=verify-full sslrootcert={} application_name=standby1",
            relay.port(),
            certs.ca_cert().display()
        ),
    );
    workload::insert_rows(&primary, 1..=300);
    workload::wait_rows(&primary, &standby);
    relay.wait_for_downstream("standby1");
    // The walreceiver's session used channel binding (the relay logs the method per session).
    let log = relay.wait_for_log("SCRAM-SHA-256-PLUS");
    assert!(
        log.lines().any(|l| l.contains("downstream connected")
            && l.contains("application_name=\"standby1\"")
            && l.contains("tls=true")
            && l.contains("SCRAM-SHA-256-PLUS")),
        "no PLUS session of standby1 in the relay log:\n{log}"
    );

    // psql with channel_binding=require over TLS: IDENTIFY_SYSTEM answers the primary's id.
    let systemid = primary.system_identifier();
    let out = psql(
        &conninfo(
            &relay,
            "user=rep password='s3cretpw' sslmode=require channel_binding=require",
        ),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_or_else(|e| panic!("IDENTIFY_SYSTEM over TLS with channel binding: {e}"));
    assert!(out.starts_with(&format!("{systemid}|")), "{out}");
    // The verifier copied from the primary works unchanged, with verify-full.
    let out = psql(
        &conninfo(
            &relay,
            &format!(
                "user=copied password='copied pw' sslmode=verify-full sslrootcert={}",
                certs.ca_cert().display()
            ),
        ),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_or_else(|e| panic!("IDENTIFY_SYSTEM as the copied user: {e}"));
    assert!(out.starts_with(&format!("{systemid}|")), "{out}");

    // A wrong password, and an unknown user: the same 28P01, nothing saying which.
    for user in ["rep", "nobody"] {
        let e = psql(
            &conninfo(
                &relay,
                &format!("user={user} password=wrong sslmode=require"),
            ),
            "IDENTIFY_SYSTEM",
        )
        .unwrap_err();
        assert!(
            e.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{e}"
        );
    }
    // The reason is in the relay's log only, with the hba line, once per failure.
    let log = relay.wait_for_log("Role \"nobody\" does not exist.");
    assert!(
        log.contains("Connection matched file") && log.contains("line 4"),
        "{log}"
    );
    // A reject line, over TLS, and a plaintext client where only hostssl lines match.
    let e = psql(
        &conninfo(&relay, "user=bad password=x sslmode=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \"bad\", SSL encryption"),
        "{e}"
    );
    let e = psql(
        &conninfo(&relay, "user=rep password='s3cretpw' sslmode=disable"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"rep\", no encryption"),
        "{e}"
    );

    // Direct TLS (no SSLRequest), ALPN postgresql: the hostssl trust line lets `direct` in.
    assert_eq!(
        direct_tls(relay.port(), &certs.ca_cert(), true, "direct"),
        Some(b'R'),
        "direct TLS with ALPN"
    );
    // Without ALPN the relay closes the connection without a word, as PostgreSQL 17 does.
    assert_eq!(
        direct_tls(relay.port(), &certs.ca_cert(), false, "direct"),
        None,
        "direct TLS without ALPN"
    );
    relay.wait_for_log("received direct SSL connection request without ALPN");

    // Bytes after an SSLRequest, before the handshake, are refused (CVE-2021-23214); a
    // GSSENCRequest is still answered N.
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut smuggled = ssl_request.to_vec();
    smuggled.extend_from_slice(&[0, 0, 0, 8, 0, 3, 0, 0]);
    match send_raw(relay.port(), &smuggled).unwrap() {
        RawOutcome::Error(e) => {
            assert_eq!(e.code(), "08P01", "{e}");
            assert_eq!(e.message(), "received unencrypted data after SSL request");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let gssenc_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    match send_raw(relay.port(), &gssenc_request).unwrap() {
        RawOutcome::Other(reply) => assert_eq!(reply, b"N"),
        other => panic!("expected N, got {other:?}"),
    }

    // SIGHUP with a changed hba file: a new line rejects `rep` for new connections, while the
    // standby, connected as `rep`, streams on over the same session.
    let walreceiver = "select pid, status from pg_stat_wal_receiver";
    let before = standby.psql(walreceiver);
    write(
        hba.clone(),
        &format!("hostssl   replication rep     127.0.0.1/32  reject\n{HBA}"),
    );
    assert!(os::signal(&[relay.pid()], "HUP"));
    let reloads = |log: &str| log.matches("reloaded: downstream access rules").count();
    relay.wait_for_log("reloaded: downstream access rules");
    let e = psql(
        &conninfo(&relay, "user=rep password='s3cretpw' sslmode=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \"rep\", SSL encryption"),
        "{e}"
    );
    let copied = format!(
        "user=copied password='copied pw' sslmode=verify-full sslrootcert={}",
        certs.ca_cert().display()
    );
    psql(&conninfo(&relay, &copied), "IDENTIFY_SYSTEM").expect("copied still gets in");
    // A broken hba file is reported and the running rules stay.
    write(
        hba.clone(),
        "hostssl replication rep 127.0.0.1/32 no-such-method\n",
    );
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("downstream access files not reloaded, the running rules stay");
    assert_eq!(reloads(&relay.log()), 1, "the broken file was applied");
    psql(&conninfo(&relay, &copied), "IDENTIFY_SYSTEM").expect("copied still gets in");
    let e = psql(
        &conninfo(&relay, "user=rep password='s3cretpw' sslmode=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(e.contains("pg_hba.conf rejects"), "{e}");
    workload::insert_rows(&primary, 321..=400);
    workload::wait_rows(&primary, &standby);
    assert_eq!(standby.psql(walreceiver), before, "the standby reconnected");

    // The standby streamed throughout; no password or verifier ever reached the log.
    workload::insert_rows(&primary, 401..=420);
    workload::wait_rows(&primary, &standby);
    let log = relay.log();
    for secret in ["s3cret", "copied pw", verifier.as_str()] {
        assert!(!log.contains(secret), "the relay log holds a secret");
    }
    let auth_text = std::fs::read_to_string(&auth).unwrap();
    for line in auth_text.lines() {
        let v = line.rsplit(' ').next().unwrap().trim_matches('"');
        assert!(!log.contains(v), "the relay log holds a verifier");
    }
    relay.assert_running();
}

/// Connects with direct TLS (ALPN `postgresql` or none), sends a StartupMessage for `user`
/// and returns the tag of the first message the relay sends, `None` when it sends nothing.
fn direct_tls(port: u16, ca: &Path, alpn: bool, user: &str) -> Option<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("127.0.0.1").unwrap().to_owned(),
    )
    .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in ["user", user, "replication", "true", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    if tls.write_all(&pkt).and_then(|()| tls.flush()).is_err() {
        return None;
    }
    let mut tag = [0u8; 1];
    match tls.read(&mut tag) {
        Ok(1) => Some(tag[0]),
        _ => None,
    }
}

/// The same rules and clients against PostgreSQL itself: the texts the relay test expects are
/// PostgreSQL's own.
#[test]
fn harness_selfcheck_access_refusals() {
    let certs = TestCerts::new();
    let mut pg = PgCluster::init_primary("pg_access");
    pg.psql("create role rep login replication password 's3cretpw'");
    pg.psql("create role bad login replication password 'x'");
    pg.write_hba(&format!(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\n{HBA}"
    ));
    pg.enable_ssl(&certs);
    let ci = |rest: &str| {
        format!(
            "host=127.0.0.1 port={} replication=true connect_timeout=20 {rest}",
            pg.port()
        )
    };
    let out = psql(
        &ci("user=rep password=s3cretpw sslmode=require channel_binding=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap();
    assert!(
        out.starts_with(&format!("{}|", pg.system_identifier())),
        "{out}"
    );
    let e = psql(
        &ci("user=rep password=wrong sslmode=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"rep\""),
        "{e}"
    );
    let e = psql(
        &ci("user=bad password=x sslmode=require"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \"bad\", SSL encryption"),
        "{e}"
    );
    let e = psql(
        &ci("user=rep password=s3cretpw sslmode=disable"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"rep\", no encryption"),
        "{e}"
    );
}

/// The upstream side locked down: a primary that takes replication connections only over TLS
/// and the relay's role only with SCRAM-SHA-256. The relay, with `sslmode=verify-full` and a
/// password, streams from it and a standby behind the relay gets every row; the same role
/// without TLS, or with a wrong password, is refused by the primary.
#[test]
fn relay_streams_from_a_tls_only_scram_only_upstream_with_verify_full() {
    let certs = TestCerts::new();
    let mut primary = PgCluster::init_primary("tls_primary");
    primary.enable_ssl(&certs);
    primary.psql(
        "set password_encryption = 'scram-sha-256'; \
         create role replicator login replication password 'up pw'",
    );
    // The harness's own sessions (psql, pg_basebackup) are `postgres` over TLS; the relay's
    // role has only the SCRAM line, and nothing is accepted in plaintext.
    primary.write_hba(
        "local all all trust\n\
         hostssl all postgres 127.0.0.1/32 trust\n\
         hostssl replication postgres 127.0.0.1/32 trust\n\
         hostssl replication replicator 127.0.0.1/32 scram-sha-256\n\
         host all all 0.0.0.0/0 reject\n\
         host replication all 0.0.0.0/0 reject\n",
    );
    primary.psql("select pg_reload_conf()");
    workload::create_table(&primary);
    let upstream = |password: &str, sslmode: &str| {
        format!(
            "host=localhost port={} user=replicator password='{password}' sslmode={sslmode} sslrootcert={}",
            primary.port(),
            certs.ca_cert().display()
        )
    };
    // What the primary says to the relay's role without TLS, and with a wrong password.
    let e = psql(
        &format!("{} replication=true", upstream("up pw", "disable")),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("pg_hba.conf rejects replication connection"),
        "{e}"
    );
    let e = psql(
        &format!("{} replication=true", upstream("wrong", "verify-full")),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"replicator\""),
        "{e}"
    );

    let mut relay = Relay::start(&upstream("up pw", "verify-full"), "relay_tls_up");
    relay.wait_ready();
    let standby = PgCluster::basebackup_standby(&primary, "standby1", relay.port());
    workload::insert_rows(&primary, 1..=1000);
    workload::wait_rows(&primary, &standby);
    // The primary sees the relay's walsender session over TLS, as `replicator`.
    assert_eq!(
        primary.psql(
            "select r.usename, s.ssl from pg_stat_replication r join pg_stat_ssl s using (pid) \
             where r.application_name = 'walrelay'"
        ),
        "replicator|t"
    );
    relay.assert_running();
    assert!(
        !relay.log().contains("up pw"),
        "the relay logged the password"
    );
}
