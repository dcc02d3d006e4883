//! Answers to replication commands, from the store's state, in PostgreSQL's formats and words.
//! `START_REPLICATION` is handed to [`walsender`]; everything else is answered here.

use std::sync::Arc;

use super::client::{server_version_num, Client};
use super::connection::Conn;
use super::context::Context;
use super::error::{slot_error, SessionEnd};
use super::walsender;
use crate::proto::backend::{self, Column};
use crate::proto::command::{parse_command, Command, CommandError};
use crate::proto::error::{sqlstate, PgError};
use crate::wal::segment::{format_seg_size, history_file_name};

pub async fn execute(
    ctx: &Arc<Context>,
    conn: &mut Conn,
    client: &Client,
    query: &str,
) -> Result<(), SessionEnd> {
    tracing::debug!(query, "replication command");
    let cmd = match parse_command(query) {
        Ok(c) => c,
        Err(e) => {
            let code = match e {
                CommandError::NotReplicationCommand => sqlstate::FEATURE_NOT_SUPPORTED,
                CommandError::Syntax | CommandError::InvalidTimeline(_) => sqlstate::SYNTAX_ERROR,
            };
            conn.send_error(&PgError::error(code, e.to_string()))
                .await?;
            return Ok(());
        }
    };
    let major = client.server_major();
    let out = conn.out();
    match cmd {
        // An empty query is not a replication command, so a physical walsender treats it as
        // SQL and refuses it.
        Command::Empty => {
            return Ok(conn
                .send_error(&PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    CommandError::NotReplicationCommand.to_string(),
                ))
                .await?)
        }
        Command::IdentifySystem => {
            let d = ctx.store.servable().end();
            let tli_col = if major >= 16 { Column::int8("timeline") } else { Column::int4("timeline") };
            backend::single_row(
                out,
                &[Column::text("systemid"), tli_col, Column::text("xlogpos"), Column::text("dbname")],
                &[
                    Some(client.identity.system_identifier.as_bytes()),
                    Some(d.timeline.to_string().as_bytes()),
                    Some(d.lsn.to_string().as_bytes()),
                    None,
                ],
                "IDENTIFY_SYSTEM",
            );
        }
        Command::Show(name) => match show_value(&name, client) {
            Some((col, v)) => {
                backend::single_row(out, &[Column::text(col)], &[Some(v.as_bytes())], "SHOW");
            }
            None => {
                return Ok(conn
                    .send_error(&PgError::error(
                        sqlstate::UNDEFINED_OBJECT,
                        format!("unrecognized configuration parameter \"{name}\""),
                    ))
                    .await?)
            }
        },
        Command::TimelineHistory(tli) => {
            // PostgreSQL sends the RowDescription before it opens the file.
            let content_col = if major <= 13 {
                Column { name: "content", type_oid: backend::oid::BYTEA }
            } else {
                Column::text("content")
            };
            backend::row_description(out, &[Column::text("filename"), content_col]);
            let name = history_file_name(tli);
            match ctx.store.history(tli) {
                Some(content) => {
                    backend::data_row(out, &[Some(name.as_bytes()), Some(&content)]);
                    backend::command_complete(out, "TIMELINE_HISTORY");
                }
                None => {
                    return Ok(conn
                        .send_error(&PgError::error(
                            sqlstate::UNDEFINED_FILE,
                            format!("could not open file \"pg_wal/{name}\": No such file or directory"),
                        ))
                        .await?)
                }
            }
        }
        Command::ReadReplicationSlot(_) if major < 15 => {
            return Ok(conn.send_error(&PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                CommandError::NotReplicationCommand.to_string(),
            ))
            .await?)
        }
        Command::ReadReplicationSlot(name) => {
            let slot = ctx.store.slots().get(&name);
            let restart = slot.as_ref().and_then(|s| s.restart_lsn).map(|l| l.to_string());
            let tli = slot.as_ref().and_then(|s| s.restart_lsn.and(s.restart_tli)).map(|t| t.to_string());
            // An unknown slot is a row of NULLs, not an error.
            backend::single_row(
                out,
                &[Column::text("slot_type"), Column::text("restart_lsn"), Column::int8("restart_tli")],
                &[
                    slot.as_ref().map(|_| &b"physical"[..]),
                    restart.as_deref().map(str::as_bytes),
                    tli.as_deref().map(str::as_bytes),
                ],
                "READ_REPLICATION_SLOT",
            );
        }
        Command::DropSlot { name, .. } => match ctx.store.slots().drop_slot(&name, client.pid) {
            Ok(()) => backend::command_complete(out, "DROP_REPLICATION_SLOT"),
            Err(e) => return Ok(conn.send_error(&slot_error(&e)).await?),
        },
        Command::CreatePhysicalSlot { name, temporary, reserve_wal } => {
            let d = ctx.store.durable();
            let reserve = reserve_wal.then_some((d.lsn, d.timeline));
            match ctx.store.slots().create(&name, temporary, reserve, client.pid) {
                Ok(()) => {
                    tracing::info!(slot = %name, temporary, reserve_wal, "created replication slot");
                    // consistent_point is 0/0 for physical slots, even with RESERVE_WAL.
                    backend::single_row(
                        out,
                        &[
                            Column::text("slot_name"),
                            Column::text("consistent_point"),
                            Column::text("snapshot_name"),
                            Column::text("output_plugin"),
                        ],
                        &[Some(name.as_bytes()), Some(b"0/0"), None, None],
                        "CREATE_REPLICATION_SLOT",
                    );
                }
                Err(e) => return Ok(conn.send_error(&slot_error(&e)).await?),
            }
        }
        Command::CreateLogicalSlot { .. } | Command::StartLogicalReplication { .. } => {
            return Ok(conn
                .send_error(&PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "walrelay supports only physical replication",
                ))
                .await?)
        }
        Command::StartReplication { slot, start, timeline } => {
            return walsender::start_replication(ctx, conn, client, slot, start, timeline).await;
        }
        Command::BaseBackup => {
            return Ok(conn
                .send_error(
                    &PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, "walrelay cannot take base backups")
                        .with_hint("Take the base backup from the primary with pg_basebackup, then point primary_conninfo at the relay."),
                )
                .await?)
        }
        Command::AlterReplicationSlot | Command::UploadManifest => {
            return Ok(conn
                .send_error(&PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "this replication command is not supported by walrelay",
                ))
                .await?)
        }
    }
    backend::ready_for_query(conn.out());
    conn.flush().await?;
    Ok(())
}

/// The values a walsender's `SHOW` gives that clients use, as a hot standby reports them:
/// the column name (spelled as PostgreSQL spells the variable) and the value.
fn show_value(name: &str, client: &Client) -> Option<(&'static str, String)> {
    let id = &client.identity;
    Some(match name {
        "wal_segment_size" => ("wal_segment_size", format_seg_size(id.seg_size)),
        "data_directory_mode" => ("data_directory_mode", "0700".into()),
        "transaction_read_only" => ("transaction_read_only", "on".into()),
        "default_transaction_read_only" => ("default_transaction_read_only", "on".into()),
        "in_hot_standby" => ("in_hot_standby", "on".into()),
        "integer_datetimes" => ("integer_datetimes", "on".into()),
        "server_version" => ("server_version", id.server_version.clone()),
        "server_version_num" => (
            "server_version_num",
            server_version_num(&id.server_version).to_string(),
        ),
        "application_name" => ("application_name", client.application_name.clone()),
        "server_encoding" => ("server_encoding", "UTF8".into()),
        "client_encoding" => ("client_encoding", "UTF8".into()),
        "wal_block_size" => ("wal_block_size", "8192".into()),
        "block_size" => ("block_size", "8192".into()),
        "max_identifier_length" => ("max_identifier_length", "63".into()),
        "timezone" => ("TimeZone", "Etc/UTC".into()),
        "datestyle" => ("DateStyle", "ISO, MDY".into()),
        "standard_conforming_strings" => ("standard_conforming_strings", "on".into()),
        _ => return None,
    })
}
