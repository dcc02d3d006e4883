//! The upstream client against a real PostgreSQL 15 (Debian's, `/usr/lib/postgresql/15/bin`,
//! or `WALRELAY_TEST_PGBIN`): authentication methods, TLS modes, replication commands, the
//! CopyBoth stream, multi-host and `target_session_attrs`.
//!
//! One cluster serves every scenario: the single `#[test]` starts it (a harness primary with
//! TLS on, one role per authentication method and an hba line for each), runs the scenarios in
//! order, reports all failures together, and the cluster stops when it drops (also on panic).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::BytesMut;
use walrelay::config::conninfo::ConnInfo;
use walrelay::proto::replication::{now_pg, parse_server_copy, ServerCopyMessage, StandbyStatus};
use walrelay::upstream::{connect, connect_any, CopyEvent, StartOutcome, UpstreamError};
use walrelay::wal::Lsn;

use crate::harness::os::free_port;
use crate::harness::tls::TestCerts;
use crate::harness::{PgCluster, SEG_SIZE};

const MD5_PW: &str = "md5 secret";
const SCRAM_PW: &str = "scram's secret";

/// Who may connect how: `nobody` has no line (28000), `norepl` has one but no REPLICATION
/// attribute (42501). The `host all postgres` line is the harness's psql; it matches no
/// replication connection.
const HBA: &str = "local all all trust\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host replication trust_user 127.0.0.1/32 trust\n\
                   host replication md5_user 127.0.0.1/32 md5\n\
                   host replication scram_user 127.0.0.1/32 scram-sha-256\n\
                   host replication norepl 127.0.0.1/32 trust\n";

/// The server the scenarios run against, and the files they use beside it.
struct Pg {
    cluster: PgCluster,
    /// The CA and server certificate; the scenarios' own files (pgpass) go in its dir too.
    certs: TestCerts,
    port: u16,
}

impl Pg {
    fn start() -> Result<Pg> {
        let certs = TestCerts::new();
        let mut cluster = PgCluster::init_primary("upstream");
        cluster.append_conf("# upstream_connection\nfsync = off\n");
        cluster.write_hba(HBA);
        cluster.enable_ssl(&certs);
        let pg = Pg {
            port: cluster.port(),
            cluster,
            certs,
        };
        pg.psql("CREATE ROLE trust_user LOGIN REPLICATION")?;
        pg.psql(&format!(
            "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN REPLICATION PASSWORD '{MD5_PW}'"
        ))?;
        pg.psql(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN REPLICATION PASSWORD '{}'",
            SCRAM_PW.replace('\'', "''")
        ))?;
        pg.psql("CREATE ROLE norepl LOGIN")?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.cluster.data_dir()
    }

    /// A file in the certificates' dir: `ca.crt`, `server.crt`, or one a scenario writes.
    fn file(&self, name: &str) -> PathBuf {
        self.certs.dir().join(name)
    }

    fn psql(&self, sql: &str) -> Result<String> {
        self.cluster
            .try_psql(sql)
            .map_err(|e| anyhow!("psql {sql:?}: {e}"))
    }

    fn conninfo(&self, extra: &str) -> ConnInfo {
        let s = format!("host=127.0.0.1 port={} {extra}", self.port);
        ConnInfo::parse_with_env(&s, |_| None).expect("test conninfo parses")
    }
}

fn server_code(r: Result<impl std::fmt::Debug, UpstreamError>) -> Result<String> {
    match r {
        Err(UpstreamError::Server(e)) => Ok(e.code),
        other => bail!("expected a server error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn trust_plaintext(pg: &Pg) -> Result<()> {
    let c = connect(
        &pg.conninfo("user=trust_user sslmode=disable"),
        0,
        "walrelay-test",
    )
    .await?;
    ensure!(!c.is_tls());
    let v = c
        .server_version()
        .ok_or_else(|| anyhow!("no server_version"))?;
    ensure!(v.starts_with("15."), "server_version {v}");
    ensure!(c.params().get("in_hot_standby").map(String::as_str) == Some("off"));
    ensure!(c.params().get("integer_datetimes").map(String::as_str) == Some("on"));
    ensure!(c.params().get("application_name").map(String::as_str) == Some("walrelay-test"));
    ensure!(c.backend_key().is_some_and(|(pid, _)| pid > 0));
    ensure!(c.host().port == pg.port);
    c.terminate().await;
    Ok(())
}

async fn password_methods(pg: &Pg) -> Result<()> {
    for (user, pw) in [("md5_user", MD5_PW), ("scram_user", SCRAM_PW)] {
        for mode in ["disable", "allow", "prefer", "require"] {
            let mut ci = pg.conninfo(&format!("user={user} sslmode={mode}"));
            ci.password = Some(pw.to_string());
            let mut c = connect(&ci, 0, "walrelay-test")
                .await
                .with_context(|| format!("{user} sslmode={mode}"))?;
            // allow: plaintext first, and the server accepts it.
            let want_tls = !matches!(mode, "disable" | "allow");
            ensure!(c.is_tls() == want_tls, "{user} {mode}: tls={}", c.is_tls());
            let rows = c.simple_query("IDENTIFY_SYSTEM").await?;
            ensure!(rows.len() == 1);
            c.terminate().await;
        }
    }
    Ok(())
}

/// `channel_binding=require` only succeeds through SCRAM-SHA-256-PLUS, so this proves the
/// tls-server-end-point binding data is what the server computes.
async fn scram_plus_channel_binding(pg: &Pg) -> Result<()> {
    let mut ci = pg.conninfo("user=scram_user sslmode=require channel_binding=require");
    ci.password = Some(SCRAM_PW.to_string());
    let c = connect(&ci, 0, "").await?;
    ensure!(c.is_tls());
    c.terminate().await;
    // Without TLS there is nothing to bind to: refused on the client side.
    let mut ci = pg.conninfo("user=scram_user sslmode=disable channel_binding=require");
    ci.password = Some(SCRAM_PW.to_string());
    match connect(&ci, 0, "").await {
        Err(UpstreamError::Auth(m)) if m.contains("channel binding") => {}
        other => bail!(
            "expected a channel binding refusal, got {:?}",
            other.map(|_| ())
        ),
    }
    // And md5 never satisfies channel_binding=require: the password is not sent.
    let mut ci = pg.conninfo("user=md5_user sslmode=require channel_binding=require");
    ci.password = Some(MD5_PW.to_string());
    ensure!(matches!(
        connect(&ci, 0, "").await,
        Err(UpstreamError::Auth(_))
    ));
    Ok(())
}

async fn certificate_verification(pg: &Pg) -> Result<()> {
    let ca = pg.file("ca.crt");
    let ok = [
        format!("host=localhost user=trust_user sslmode=verify-full sslrootcert='{}'", ca.display()),
        format!("user=trust_user sslmode=verify-full sslrootcert='{}'", ca.display()),
        format!("host=wrong.example hostaddr=127.0.0.1 user=trust_user sslmode=verify-ca sslrootcert='{}'", ca.display()),
        format!("user=trust_user sslmode=require sslrootcert='{}'", ca.display()),
    ];
    for extra in &ok {
        let s = format!("port={} {extra}", pg.port);
        let ci = ConnInfo::parse_with_env(&s, |_| None)?;
        let c = connect(&ci, 0, "").await.with_context(|| s.clone())?;
        ensure!(c.is_tls());
        c.terminate().await;
    }
    // Wrong host name under verify-full.
    let s = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={} user=trust_user sslmode=verify-full sslrootcert='{}'",
        pg.port,
        ca.display()
    );
    match connect(&ConnInfo::parse_with_env(&s, |_| None)?, 0, "").await {
        Err(UpstreamError::Tls(_)) => {}
        other => bail!(
            "verify-full with a wrong host name: {:?}",
            other.map(|_| ())
        ),
    }
    // The server certificate is not a CA: as a root it does not verify the chain.
    let s = format!(
        "port={} user=trust_user sslmode=verify-ca sslrootcert='{}'",
        pg.port,
        pg.file("server.crt").display()
    );
    ensure!(matches!(
        connect(&ConnInfo::parse_with_env(&s, |_| None)?, 0, "").await,
        Err(UpstreamError::Tls(_))
    ));
    // Missing root file is a configuration error (not transient).
    let s = format!(
        "port={} user=trust_user sslmode=verify-ca sslrootcert=/nonexistent/ca.crt",
        pg.port
    );
    let e = connect(&ConnInfo::parse_with_env(&s, |_| None)?, 0, "")
        .await
        .err()
        .ok_or_else(|| anyhow!("connected"))?;
    ensure!(
        matches!(e, UpstreamError::TlsConfig(_)) && !e.is_transient(),
        "{e:?}"
    );
    Ok(())
}

async fn auth_failures(pg: &Pg) -> Result<()> {
    for user in ["md5_user", "scram_user"] {
        let mut ci = pg.conninfo(&format!("user={user} sslmode=disable"));
        ci.password = Some("wrong".into());
        let code = server_code(connect(&ci, 0, "").await.map(|_| ()))?;
        ensure!(code == "28P01", "{user}: {code}");
    }
    // No password anywhere (the passfile does not exist).
    let ci = pg.conninfo(&format!(
        "user=scram_user sslmode=disable passfile='{}'",
        pg.file("none").display()
    ));
    match connect(&ci, 0, "").await {
        Err(UpstreamError::Auth(m)) if m.contains("no password supplied") => {}
        other => bail!(
            "expected 'no password supplied', got {:?}",
            other.map(|_| ())
        ),
    }
    // No pg_hba line.
    let code = server_code(
        connect(&pg.conninfo("user=nobody sslmode=disable"), 0, "")
            .await
            .map(|_| ()),
    )?;
    ensure!(code == "28000", "{code}");
    Ok(())
}

async fn password_from_pgpass(pg: &Pg) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = pg.file("pgpass");
    std::fs::write(
        &path,
        format!(
            "127.0.0.1:{}:postgres:scram_user:wrong\n127.0.0.1:{}:replication:scram_user:{}\n",
            pg.port,
            pg.port,
            SCRAM_PW.replace(':', "\\:")
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let ci = pg.conninfo(&format!(
        "user=scram_user sslmode=disable passfile='{}'",
        path.display()
    ));
    connect(&ci, 0, "").await?.terminate().await;
    // Group-readable: ignored, so there is no password.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
    ensure!(matches!(
        connect(&ci, 0, "").await,
        Err(UpstreamError::Auth(_))
    ));
    Ok(())
}

async fn replication_commands(pg: &Pg) -> Result<()> {
    let mut c = connect(&pg.conninfo("user=trust_user"), 0, "walrelay-test").await?;
    let rows = c.simple_query("IDENTIFY_SYSTEM").await?;
    ensure!(rows.len() == 1 && rows[0].len() == 4, "{rows:?}");
    let sysid = pg.psql("SELECT system_identifier FROM pg_control_system()")?;
    ensure!(
        rows[0][0].as_deref() == Some(sysid.as_str()),
        "{rows:?} vs {sysid}"
    );
    ensure!(rows[0][1].as_deref() == Some("1"));
    ensure!(
        rows[0][3].is_none(),
        "dbname is NULL for physical replication"
    );
    let rows = c.simple_query("SHOW wal_segment_size").await?;
    ensure!(rows == vec![vec![Some("16MB".to_string())]], "{rows:?}");
    // SQL is refused with 0A000 and the connection stays usable.
    ensure!(server_code(c.simple_query("SELECT 1").await)? == "0A000");
    ensure!(server_code(c.simple_query("SHOW no_such_setting").await)? == "42704");
    let rows = c.simple_query("SHOW transaction_read_only").await?;
    ensure!(rows == vec![vec![Some("off".to_string())]], "{rows:?}");
    c.terminate().await;
    Ok(())
}

/// START_REPLICATION from a segment start, after generating some megabytes of WAL; reads
/// XLogData through a `select!` with a 1 ms timer that cancels `recv_copy` constantly and sends
/// status updates, checks the stream is contiguous, and compares the bytes with the server's
/// own segment files.
async fn streaming(pg: &Pg) -> Result<()> {
    let mut c = connect(
        &pg.conninfo("user=trust_user sslmode=require"),
        0,
        "walrelay-test",
    )
    .await?;
    let rows = c.simple_query("IDENTIFY_SYSTEM").await?;
    let before: Lsn = rows[0][2].as_deref().unwrap_or_default().parse()?;
    let start = before.segment_start(SEG_SIZE);
    pg.psql("CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 100000) g")?;
    let rows = c.simple_query("IDENTIFY_SYSTEM").await?;
    let xlogpos: Lsn = rows[0][2].as_deref().unwrap_or_default().parse()?;
    ensure!(
        xlogpos.0 - start.0 > 8 << 20,
        "expected several MB of WAL, {start}..{xlogpos}"
    );
    let outcome = c
        .start_copy_both(&format!("START_REPLICATION {start} TIMELINE 1"))
        .await?;
    ensure!(outcome == StartOutcome::CopyBoth, "{outcome:?}");

    let mut next = start;
    let mut wal = Vec::new();
    let mut xlog_messages = 0;
    let mut ticks = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while next < xlogpos {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out at {next}, want {xlogpos}"
        );
        tokio::select! {
            ev = c.recv_copy() => match ev? {
                CopyEvent::Data(payload) => match parse_server_copy(&payload)? {
                    ServerCopyMessage::XLogData(x) => {
                        ensure!(x.start == next, "gap: got {} want {next}", x.start);
                        ensure!(x.wal_end >= x.start);
                        wal.extend_from_slice(x.data);
                        next = Lsn(x.start.0 + x.data.len() as u64);
                        xlog_messages += 1;
                    }
                    ServerCopyMessage::Keepalive(_) => {}
                },
                other => bail!("unexpected {other:?}"),
            },
            _ = tick.tick() => {
                ticks += 1;
                let mut b = BytesMut::new();
                StandbyStatus { write: next, flush: next, apply: Lsn(0), client_time: now_pg(), reply_requested: false }
                    .encode_payload(&mut b);
                c.send_copy_data(&b).await?;
            }
        }
    }
    ensure!(xlog_messages > 0);
    eprintln!(
        "streamed {} bytes in {xlog_messages} XLogData messages; {ticks} timer ticks",
        next.0 - start.0
    );
    // The client stops: no result set, then the connection is idle again.
    let rows = c.finish_copy().await?;
    ensure!(rows.is_empty(), "{rows:?}");
    let rows = c.simple_query("IDENTIFY_SYSTEM").await?;
    ensure!(rows.len() == 1);
    c.terminate().await;

    // Byte-for-byte against pg_wal (segment files are named TLI, then the segment number split
    // in two halves of 0x100 segments per 4 GB with 16 MB segments).
    let mut checked = 0;
    for (i, chunk) in wal.chunks(SEG_SIZE as usize).enumerate() {
        let seg = start.0 / SEG_SIZE + i as u64;
        let name = format!("{:08X}{:08X}{:08X}", 1, seg / 0x100, seg % 0x100);
        let file =
            std::fs::read(pg.data().join("pg_wal").join(&name)).with_context(|| name.clone())?;
        ensure!(
            file.get(..chunk.len()) == Some(chunk),
            "streamed bytes differ from {name}"
        );
        checked += chunk.len();
    }
    ensure!(checked == wal.len());
    Ok(())
}

async fn start_replication_errors(pg: &Pg) -> Result<()> {
    let mut c = connect(&pg.conninfo("user=trust_user sslmode=disable"), 0, "").await?;
    // Before CopyBothResponse: a timeline this server never had.
    ensure!(
        server_code(
            c.start_copy_both("START_REPLICATION 0/1000000 TIMELINE 5")
                .await
        )? == "XX000"
    );
    // After CopyBothResponse: a start point ahead of the flush position.
    let outcome = c
        .start_copy_both("START_REPLICATION FF/0 TIMELINE 1")
        .await?;
    ensure!(outcome == StartOutcome::CopyBoth);
    ensure!(server_code(c.recv_copy().await)? == "XX000");
    ensure!(c.is_ready());
    // The pending ReadyForQuery is consumed by the next query.
    ensure!(c.simple_query("IDENTIFY_SYSTEM").await?.len() == 1);
    // A role without REPLICATION is refused at startup (FATAL).
    let code = server_code(
        connect(&pg.conninfo("user=norepl sslmode=disable"), 0, "")
            .await
            .map(|_| ()),
    )?;
    ensure!(code == "42501", "{code}");
    c.terminate().await;
    Ok(())
}

async fn multi_host_and_target(pg: &Pg) -> Result<()> {
    let dead = free_port();
    let ci = ConnInfo::parse_with_env(
        &format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{} user=trust_user connect_timeout=5",
            pg.port
        ),
        |_| None,
    )?;
    let c = connect_any(&ci, "", None).await?;
    ensure!(c.host().port == pg.port);
    c.terminate().await;
    for attrs in ["read-write", "primary", "any", "prefer-standby"] {
        let s = format!(
            "host=127.0.0.1,localhost port={dead},{} user=trust_user target_session_attrs={attrs}",
            pg.port
        );
        let c = connect_any(&ConnInfo::parse_with_env(&s, |_| None)?, "", None)
            .await
            .with_context(|| s.clone())?;
        ensure!(c.host().host == "localhost", "{attrs}");
        c.terminate().await;
    }
    for attrs in ["standby", "read-only"] {
        let s = format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{} user=trust_user target_session_attrs={attrs}",
            pg.port
        );
        match connect_any(&ConnInfo::parse_with_env(&s, |_| None)?, "", None).await {
            Err(UpstreamError::NoSuitableHost(reasons)) => {
                ensure!(reasons.len() == 2, "{reasons:?}");
                ensure!(reasons[0].contains("Connection refused"), "{reasons:?}");
                ensure!(reasons[1].contains("not"), "{reasons:?}");
            }
            other => bail!(
                "{attrs}: expected NoSuitableHost, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    Ok(())
}

async fn nothing_listening(pg: &Pg) -> Result<()> {
    let dead = free_port();
    let ci = ConnInfo::parse_with_env(
        &format!("host=127.0.0.1 port={dead} user=trust_user"),
        |_| None,
    )?;
    match connect(&ci, 0, "").await {
        Err(e @ UpstreamError::Io { .. }) => {
            ensure!(e.is_transient());
            ensure!(e.to_string().contains("Connection refused"), "{e}");
        }
        other => bail!("expected an Io error, got {:?}", other.map(|_| ())),
    }
    let _ = pg;
    Ok(())
}

type Scenario = for<'a> fn(&'a Pg) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

macro_rules! scenarios {
    ($($f:ident),* $(,)?) => { vec![$((stringify!($f), (|pg| Box::pin($f(pg))) as Scenario)),*] };
}

#[test]
fn upstream_connection_against_postgres_15() {
    let pg = Pg::start().expect("start PostgreSQL 15");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut failures = Vec::new();
    let list: Vec<(&str, Scenario)> = scenarios![
        trust_plaintext,
        password_methods,
        scram_plus_channel_binding,
        certificate_verification,
        auth_failures,
        password_from_pgpass,
        replication_commands,
        streaming,
        start_replication_errors,
        multi_host_and_target,
        nothing_listening,
    ];
    for (name, f) in list {
        let started = std::time::Instant::now();
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), f(&pg)).await }) {
            Ok(Ok(())) => eprintln!("ok   {name} ({:?})", started.elapsed()),
            Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
            Err(_) => failures.push(format!("{name}: timed out")),
        }
    }
    if !failures.is_empty() {
        // The cluster prints its log tail as it drops.
        panic!(
            "{} scenario(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
