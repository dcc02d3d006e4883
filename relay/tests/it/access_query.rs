//! `--auth-query`: downstream users' verifiers taken from the primary on demand, as PgBouncer's
//! `auth_query`. A primary with roles made after the relay started, a relay with a
//! `scram-sha-256` hba line and no auth-file entry for them: the primary's password works
//! through the relay (psql's IDENTIFY_SYSTEM, a standby streaming every row); a wrong password,
//! an unknown user and an MD5-hashed role get the same 28P01; the auth file wins for a user it
//! lists; the upstream down gives the lookup error; no password or verifier reaches the log.
//! Then the `SECURITY DEFINER` function of `docs/security.md` for an upstream role that is no
//! superuser (it hands out neither a superuser's nor an expired verifier), and a changed query
//! applied by SIGHUP.

use crate::access::passwd_line;
use crate::harness::pg::psql;
use crate::harness::{os, workload, PgCluster, Topology};

const QUERY: &str = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1";

#[test]
fn access_query_takes_verifiers_from_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("relay_hba.conf");
    std::fs::write(&hba, "host replication all 127.0.0.1/32 scram-sha-256\n").unwrap();
    // `filed` is in the auth file with one password and on the primary with another.
    let filed_line = passwd_line("filed", "file-pw");
    let auth = dir.path().join("userlist.txt");
    std::fs::write(&auth, format!("{filed_line}\n")).unwrap();

    let Topology {
        mut primary,
        relays: [relay],
        ..
    } = Topology::primary_relay()
        .relay_args(&[
            "--hba-file",
            hba.to_str().unwrap(),
            "--auth-file",
            auth.to_str().unwrap(),
            "--auth-query",
            QUERY,
        ])
        .start();
    relay.wait_for_log("looked up on the upstream (auth_query)");
    // Roles made after the relay started: nothing about them can be in the relay already.
    primary.psql("create role rep login replication password 'rep-s3cret'");
    primary.psql("create role filed login replication password 'primary-pw'");
    primary.psql(
        "set password_encryption = 'md5'; create role old login replication password 'old-pw'",
    );
    let verifier = primary.psql("select rolpassword from pg_authid where rolname = 'rep'");
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let md5 = primary.psql("select rolpassword from pg_authid where rolname = 'old'");
    assert!(md5.starts_with("md5"), "{md5}");

    let at_relay = |rest: &str| {
        psql(
            &format!(
                "host=127.0.0.1 port={} replication=true connect_timeout=20 sslmode=disable {rest}",
                relay.port()
            ),
            "IDENTIFY_SYSTEM",
        )
    };
    // The primary's password, through the relay.
    let systemid = primary.system_identifier();
    let out = at_relay("user=rep password=rep-s3cret")
        .unwrap_or_else(|e| panic!("IDENTIFY_SYSTEM as rep with the primary's password: {e}"));
    assert!(out.starts_with(&format!("{systemid}|")), "{out}");

    // A wrong password, an unknown user, a role with an MD5 hash (with its right password):
    // the same 28P01, nothing saying which.
    for (user, password) in [
        ("rep", "wrong"),
        ("nobody", "rep-s3cret"),
        ("old", "old-pw"),
    ] {
        let e = at_relay(&format!("user={user} password={password}")).unwrap_err();
        assert!(
            e.contains(&format!(
                "FATAL:  password authentication failed for user \"{user}\""
            )),
            "{user}: {e}"
        );
    }
    // The reasons are in the relay's log only, in PostgreSQL's words.
    relay.wait_for_log("Role \"nobody\" does not exist.");
    relay.wait_for_log("User \"old\" does not have a valid SCRAM secret.");

    // The auth file wins for a user it lists: its password, not the primary's.
    let out = at_relay("user=filed password=file-pw")
        .unwrap_or_else(|e| panic!("IDENTIFY_SYSTEM as filed with the file's password: {e}"));
    assert!(out.starts_with(&format!("{systemid}|")), "{out}");
    let e = at_relay("user=filed password=primary-pw").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"filed\""),
        "{e}"
    );

    // A standby whose walreceiver logs in to the relay with the primary's password: every row.
    let standby = PgCluster::basebackup_standby_to(
        &primary,
        "standby_q",
        &format!(
            "host=127.0.0.1 port={} user=rep password=rep-s3cret application_name=standby_q",
            relay.port()
        ),
    );
    workload::insert_rows(&primary, 1..=300);
    workload::wait_rows(&primary, &standby);
    relay.wait_for_downstream("standby_q");

    // No password or verifier in the relay's log.
    let log = relay.log();
    let filed_verifier = filed_line.rsplit(' ').next().unwrap().trim_matches('"');
    for secret in [
        "rep-s3cret",
        "primary-pw",
        "file-pw",
        "old-pw",
        verifier.as_str(),
        md5.as_str(),
        filed_verifier,
    ] {
        assert!(!log.contains(secret), "the relay log holds a secret");
    }

    // The upstream down: a user not cached cannot be looked up, and the client is told so
    // (PgBouncer's 08P01), not that its password is wrong; the reason is in the log.
    drop(standby);
    primary.stop();
    let e = at_relay("user=fresh password=x").unwrap_err();
    assert!(
        e.contains(
            "FATAL:  authentication failed for user \"fresh\": the password could not be looked up on the upstream, try again later"
        ),
        "{e}"
    );
    relay.wait_for_log("auth_query could not be run on the upstream");
}

/// The setup `docs/security.md` gives for a relay whose upstream role is no superuser, as it
/// is written there.
const SECURITY_DEFINER: &str = r#"
CREATE SCHEMA walrelay;
REVOKE ALL ON SCHEMA walrelay FROM PUBLIC;
GRANT USAGE ON SCHEMA walrelay TO replicator;
CREATE FUNCTION walrelay.user_verifier(p_user text, OUT username text, OUT verifier text)
  RETURNS SETOF record
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $$
  SELECT rolname::text, rolpassword
    FROM pg_catalog.pg_authid
   WHERE rolname = p_user
     AND rolcanlogin AND rolreplication      -- only roles that may stream at all
     AND (rolvaliduntil IS NULL OR rolvaliduntil > now())
$$;
REVOKE ALL ON FUNCTION walrelay.user_verifier(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION walrelay.user_verifier(text) TO replicator;
"#;

#[test]
fn access_query_through_a_security_definer_function() {
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("relay_hba.conf");
    std::fs::write(&hba, "host replication all 127.0.0.1/32 scram-sha-256\n").unwrap();
    // The query in a config file, to change it with SIGHUP below.
    let config = dir.path().join("relay.toml");
    let write_config = |query: &str| {
        std::fs::write(
            &config,
            format!(
                "hba_file = \"{}\"\nauth_query = \"{query}\"\n",
                hba.display()
            ),
        )
        .unwrap()
    };
    write_config("SELECT username, verifier FROM walrelay.user_verifier($1)");
    // The relay's upstream role is `replicator`, a replication role without superuser.
    let Topology {
        primary,
        relays: [relay],
        ..
    } = Topology::primary_relay()
        .replicator_role(false)
        .relay_args(&["--config", config.to_str().unwrap()])
        .start();
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .unwrap();
    assert!(
        docs.contains(SECURITY_DEFINER.trim()),
        "docs/security.md no longer gives this function"
    );
    primary.psql(SECURITY_DEFINER);
    // The role cannot read pg_authid itself.
    let e = psql(
        &format!(
            "port={} host=127.0.0.1 user=replicator dbname=postgres",
            primary.port()
        ),
        "SELECT rolpassword FROM pg_authid",
    )
    .unwrap_err();
    assert!(e.contains("permission denied for table pg_authid"), "{e}");
    primary.psql("create role rep login replication password 'rep-s3cret'");
    primary.psql("create role admin login superuser password 'admin-pw'");
    primary
        .psql("create role expired login replication password 'exp-pw' valid until '2000-01-01'");

    let at_relay = |user: &str, password: &str| {
        psql(
            &format!(
                "host=127.0.0.1 port={} replication=true connect_timeout=20 sslmode=disable user={user} password={password}",
                relay.port()
            ),
            "IDENTIFY_SYSTEM",
        )
    };
    let out = at_relay("rep", "rep-s3cret")
        .unwrap_or_else(|e| panic!("IDENTIFY_SYSTEM as rep through the function: {e}"));
    assert!(
        out.starts_with(&format!("{}|", primary.system_identifier())),
        "{out}"
    );
    // The function never hands out a superuser's verifier, nor an expired one: those users
    // cannot log in to the relay, even with their right passwords.
    for (user, password) in [("admin", "admin-pw"), ("expired", "exp-pw")] {
        let e = at_relay(user, password).unwrap_err();
        assert!(
            e.contains(&format!(
                "FATAL:  password authentication failed for user \"{user}\""
            )),
            "{user}: {e}"
        );
    }
    relay.wait_for_log("Role \"admin\" does not exist.");

    // SIGHUP with a query that finds no one: rep, cached a moment ago, is asked about anew and
    // refused (the cache of the old query is dropped); the log names the change.
    write_config("SELECT username, verifier FROM walrelay.user_verifier($1) WHERE false");
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: auth_query changed from");
    let e = at_relay("rep", "rep-s3cret").unwrap_err();
    assert!(
        e.contains("FATAL:  password authentication failed for user \"rep\""),
        "{e}"
    );
    relay.wait_for_log("Role \"rep\" does not exist.");
}
