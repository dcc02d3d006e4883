//! Operator commands: the subcommands other than `run`, each a short-lived process that does
//! one thing and exits with a status a script can test.
//!
//! [`status`] reads a running relay's `/status` over HTTP; [`passwd`] prints a SCRAM verifier;
//! [`check_config`] validates a config file; [`verify`] checks a data directory offline. They sit beside the daemon's folders: they read
//! the daemon's types (config, the `/status` schema) but nothing in the daemon imports them.

pub mod check_config;
pub mod passwd;
pub mod status;
pub mod verify;
