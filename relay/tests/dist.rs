//! The files under `dist/` that ship in the package: `dist/walrelay.toml.example` is accepted
//! by the built binary's `walrelay check-config`, sets every key the config file accepts, and
//! documents each key's default, flag and `WALRELAY_<NAME>` variable as clap really reads them.
//! (The unit, sysusers and tmpfiles files are checked by `scripts/check-dist`, which needs
//! `systemd-analyze`.)

// A test that panics is a failed test: the no-unwrap/no-indexing rule is for the relay itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use clap::CommandFactory;
use serde::de::{self, Deserialize, Visitor};
use walrelay::cli::Cli;
use walrelay::config::FileConfig;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/walrelay.toml.example")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).expect("read dist/walrelay.toml.example")
}

/// `walrelay check-config --config FILE`, with no `WALRELAY_*` variable of the caller's leaking
/// in: (exit success, stderr).
fn check_config(path: &std::path::Path) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrelay"));
    cmd.arg("check-config").arg("--config").arg(path);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WALRELAY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run walrelay check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The keys `FileConfig` accepts, read from its `Deserialize` impl: serde hands a struct's field
/// names to `deserialize_struct`, so a deserializer that only records them sees the same list
/// the config file parser checks against, including keys added later.
fn file_config_keys() -> BTreeSet<&'static str> {
    struct FieldNames<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("FileConfig is not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = FileConfig::deserialize(FieldNames(&mut fields));
    assert!(
        !fields.is_empty(),
        "could not read FileConfig's field names"
    );
    fields.iter().copied().collect()
}

/// The comment lines right above `key = ...` in the example, joined.
fn comment_of(text: &str, key: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim() == key && !l.trim_start().starts_with('#'))
        })
        .unwrap_or_else(|| panic!("dist/walrelay.toml.example does not set `{key}`"));
    let mut block: Vec<&str> = lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .map(|l| l.trim_start().trim_start_matches('#').trim())
        .collect();
    block.reverse();
    block.join(" ")
}

/// Each word that follows `label` in `text` (a word: letters, digits, `_` and `-`).
fn words_after<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    text.match_indices(label)
        .map(|(i, _)| {
            let rest = &text[i + label.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn example_config_passes_check_config() {
    let (ok, stderr) = check_config(&example_path());
    assert!(ok, "walrelay check-config rejected the example: {stderr}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
}

#[test]
fn check_config_rejects_a_broken_copy_of_the_example() {
    // So that the test above cannot pass by check-config accepting anything.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("typo.toml");
    let text = example_text().replacen("\nslot = ", "\nslott = ", 1);
    std::fs::write(&broken, text).unwrap();
    let (ok, stderr) = check_config(&broken);
    assert!(!ok, "check-config accepted an unknown key");
    assert!(stderr.contains("slott"), "{stderr}");
}

#[test]
fn example_config_sets_every_key() {
    let table: toml::Table = toml::from_str(&example_text()).expect("example is TOML");
    let set: BTreeSet<&str> = table.keys().map(String::as_str).collect();
    let accepted = file_config_keys();
    let missing: Vec<_> = accepted.difference(&set).collect();
    assert!(
        missing.is_empty(),
        "dist/walrelay.toml.example does not set {missing:?}: give each key a value and a comment"
    );
    // Extra keys are caught by check-config (unknown keys are errors).
    assert_eq!(set, accepted);
}

#[test]
fn example_config_documents_default_flag_and_env_of_every_key() {
    let text = example_text();
    let cli = Cli::command();
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("`run` subcommand");
    for key in file_config_keys() {
        let comment = comment_of(&text, key);
        let arg = run
            .get_arguments()
            .find(|a| a.get_id().as_str() == key)
            .unwrap_or_else(|| panic!("config key `{key}` has no `walrelay run` flag"));
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("`--{key}` reads no environment variable"))
            .to_string_lossy()
            .into_owned();
        assert_eq!(env, format!("WALRELAY_{}", key.to_uppercase()));
        assert_eq!(
            words_after(&comment, "Env: "),
            [env.as_str()],
            "the comment on `{key}` should name {env}: {comment}"
        );
        let flag = format!("--{}", arg.get_long().expect("long flag"));
        assert_eq!(
            words_after(&comment, "Flag: "),
            [flag.as_str()],
            "the comment on `{key}` should name {flag}: {comment}"
        );
        assert!(
            comment.contains("Default: "),
            "the comment on `{key}` should give its default: {comment}"
        );
    }
}

#[test]
fn check_config_loads_the_access_files_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("hba.conf");
    std::fs::write(&hba, "host replication all 10.0.0.0/8 ldap\n").unwrap();
    let path = dir.path().join("access.toml");
    let text = example_text().replacen(
        "\nhba_file = \"\"",
        &format!("\nhba_file = \"{}\"", hba.display()),
        1,
    );
    assert!(text.contains(&hba.display().to_string()));
    std::fs::write(&path, text).unwrap();
    let (ok, stderr) = check_config(&path);
    assert!(!ok, "check-config accepted a broken hba file");
    assert!(
        stderr.contains(&format!(
            "invalid authentication method \"ldap\": not supported by this build (line 1 of configuration file \"{}\")",
            hba.display()
        )),
        "{stderr}"
    );
}
