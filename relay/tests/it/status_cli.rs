//! `walrelay status` against a real `walrelay run` (no PostgreSQL: the relay's upstream is a
//! closed port, so it reports itself disconnected with no downstreams), and against nothing.

use std::process::Command;

use crate::harness::{os, Relay};

const BIN: &str = env!("CARGO_BIN_EXE_walrelay");

fn status(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("status")
        .args(args)
        .env_remove("WALRELAY_HTTP")
        .output()
        .expect("run walrelay status")
}

#[test]
fn status_table_and_json_from_a_running_relay() {
    let relay = Relay::start_without_upstream(&[]);

    let out = status(&["--http", &relay.http_addr()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("upstream -  DISCONNECTED  timeline -"),
        "{stdout}"
    );
    assert!(stdout.ends_with("\nno downstreams connected\n"), "{stdout}");
    // Not a terminal: laid out for 100 columns.
    assert!(stdout.lines().all(|l| l.chars().count() <= 100), "{stdout}");

    // The env var names the endpoint as `run --http` does.
    let out = Command::new(BIN)
        .arg("status")
        .env("WALRELAY_HTTP", format!("http://{}/", relay.http_addr()))
        .output()
        .expect("run walrelay status");
    assert!(out.status.success(), "{out:?}");

    let out = status(&["--http", &relay.http_addr(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    // Pretty, and in the relay's own key order.
    assert!(
        text.starts_with("{\n  \"upstream\": {\n    \"host\": null,\n    \"port\": null,\n    \"connected\": false,"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["upstream"]["connected"], false);
    assert_eq!(v["downstreams"], serde_json::json!([]));
}

#[test]
fn relay_not_reachable_exits_2() {
    let addr = format!("127.0.0.1:{}", os::free_port());
    let out = status(&["--http", &addr]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("walrelay status: could not connect to relay at {addr}: Connection refused\n")
    );
}
