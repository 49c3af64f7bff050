//! `delete`, `trash`, `restore` and `purge --deleted`: the grace period
//! of deleted sessions.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use koda_persistence::admin::format_timestamp;
use koda_persistence::{DeletedSession, Store};
use serde_json::json;

use crate::inspect::{cell, table};

/// `url` with `purge_on_open=off`, so that opening it purges nothing (a
/// dry run reports what a purge would remove).
pub fn without_open_purge(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}purge_on_open=off")
}

/// `delete SESSION`: as koda deletes (into the trash when the store keeps
/// a grace period). Exits 1 for an unknown session.
pub async fn delete(store: &Arc<dyn Store>, session: &str) -> Result<ExitCode> {
    if !store.delete_session(session).await? {
        eprintln!("no session {session:?} (see `koda-store sessions`)");
        return Ok(ExitCode::from(1));
    }
    let kept = store.list_deleted().await?;
    match kept.iter().find(|d| d.id == session) {
        Some(d) => println!(
            "moved {session} to the trash: `koda-store restore {session}` brings it back until {}",
            format_timestamp(d.purge_at_ms)
        ),
        None => println!("deleted {session} for good (this store keeps no grace period)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn as_json(d: &DeletedSession) -> serde_json::Value {
    json!({
        "id": d.id,
        "agent": d.agent_name,
        "project_root": d.project_root,
        "title": d.title,
        "created_at": format_timestamp(d.created_ms),
        "message_count": d.message_count,
        "deleted_at": format_timestamp(d.deleted_ms),
        "purge_at": format_timestamp(d.purge_at_ms),
    })
}

fn print_list(list: &[DeletedSession]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                format_timestamp(d.deleted_ms),
                format_timestamp(d.purge_at_ms),
                d.message_count.to_string(),
                cell(d.project_root.as_deref(), 40),
                cell(d.title.as_deref(), 60),
            ]
        })
        .collect();
    table(&["id", "deleted", "gone for good", "messages", "root", "title"], &rows);
}

/// `trash [--json]`: the deleted sessions that can still be restored.
pub async fn list(store: &Arc<dyn Store>, json: bool) -> Result<()> {
    let list = store.list_deleted().await?;
    if json {
        let out: Vec<_> = list.iter().map(as_json).collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "trash": out }))?);
    } else if list.is_empty() {
        println!("the trash is empty");
    } else {
        print_list(&list);
    }
    Ok(())
}

/// `restore SESSION`. Exits 1 when it is not in the trash.
pub async fn restore(store: &Arc<dyn Store>, session: &str) -> Result<ExitCode> {
    match store.restore_session(session).await {
        Ok(()) => {
            println!("restored {session}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e)
            if matches!(
                koda_persistence::PersistenceError::of(&e),
                Some(koda_persistence::PersistenceError::SessionNotFound(_))
            ) =>
        {
            eprintln!(
                "{session:?} is not in the trash (never deleted, already restored, or gone for \
                 good; see `koda-store trash`)"
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e),
    }
}

/// `purge --deleted [--dry-run]`: removes for good the deleted sessions
/// whose grace period has ended.
pub async fn purge(store: &Arc<dyn Store>, dry_run: bool) -> Result<()> {
    let gone = store.purge_deleted(dry_run).await?;
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} deleted session(s) for good{}",
        gone.len(),
        if dry_run { " (dry run: nothing removed)" } else { "" }
    );
    if !gone.is_empty() {
        print_list(&gone);
    }
    Ok(())
}
