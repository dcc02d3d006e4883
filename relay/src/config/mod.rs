//! Configuration: the `run` flags, the TOML file, `WALRELAY_*` env, and the upstream conninfo.

pub mod conninfo;
pub mod pgpass;
