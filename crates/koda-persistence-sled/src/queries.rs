//! One function per operation: each reads through `db` and returns what
//! the call answers, or the batch a write applies (the store applies it
//! atomically under its write lock, see `lib.rs`). Key layout in
//! [`crate::schema`], values in [`crate::rows`].

use anyhow::Result;
use koda_persistence_api::backend::{ContextRow, NewMessage, UsageTally, format_timestamp, session_not_found};
use koda_persistence_api::{Message, PersistenceError, Role, SessionInfo, SessionUsage};
use sled::IVec;

use crate::db::{Tree, Writes};

use crate::bodies::Refs;
use crate::bodies::resolve;
use crate::keys;
use crate::rows::{StoredMessage, StoredSession, decode, encode, role_byte, role_of, session_of, to_message};

pub(crate) fn get_session(db: &Tree, id: &str) -> Result<Option<StoredSession>> {
    db.session(id)
}

/// A session's messages in conversation order, bodies resolved, for a read.
pub(crate) fn read_messages(db: &Tree, id: &str) -> Result<Vec<StoredMessage>> {
    session_messages(db, id)?.into_iter().map(|(_, m)| resolve(db, m)).collect()
}

/// A session's messages in conversation order, with their keys (bodies
/// by address, as stored).
pub(crate) fn session_messages(db: &Tree, id: &str) -> Result<Vec<(IVec, StoredMessage)>> {
    db.messages(keys::messages_of(id)).collect()
}

pub(crate) fn as_u64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

pub(crate) fn create_session(db: &Tree, sid: &str, agent: &str, root: &str, now: i64) -> Result<Writes> {
    let seq = match db.index(keys::seq_counter())? {
        Some(v) => decode::<u64>(&v, "the session counter")? + 1,
        None => 1,
    };
    let record = StoredSession {
        agent_name: agent.to_owned(),
        project_root: root.to_owned(),
        created_ms: now,
        seq,
        last_accessed_ms: None,
        title: None,
        mode: None,
        message_count: 0,
        next_ord: 0,
        usage: Vec::new(),
    };
    let mut w = db.writes();
    w.index(keys::seq_counter(), encode(&seq)?);
    w.index(keys::by_root(root, as_u64(now), seq), sid.as_bytes());
    w.session(sid, &record)?;
    Ok(w)
}

/// The highest id an importer claimed (0: none).
pub(crate) fn id_floor(db: &Tree) -> Result<u64> {
    match db.index(keys::id_floor())? {
        Some(v) => Ok(decode::<u64>(&v, "the id floor")?),
        None => Ok(0),
    }
}

/// A fresh message id: above every id handed out or claimed.
pub(crate) fn next_id(db: &Tree) -> Result<u64> {
    Ok(id_floor(db)?.saturating_add(db.generate_id()?).saturating_add(1))
}

/// The root's sessions and the root-less ones, merged newest first (both
/// indexes order by `!created, !seq` after their prefix): O(limit).
pub(crate) fn listed_ids(db: &Tree, root: &str, limit: usize) -> Result<Vec<IVec>> {
    let prefix = keys::root_prefix(root);
    let rooted: Vec<(IVec, IVec)> = db.index_scan(&prefix).take(limit).collect::<Result<_>>()?;
    let rootless: Vec<(IVec, IVec)> = db.index_scan([keys::ROOTLESS]).take(limit).collect::<Result<_>>()?;
    let mut both: Vec<(&[u8], IVec)> = rooted
        .iter()
        .map(|(k, v)| (&k[prefix.len()..], v.clone()))
        .chain(rootless.iter().map(|(k, v)| (&k[1..], v.clone())))
        .collect();
    both.sort_by(|a, b| a.0.cmp(b.0));
    Ok(both.into_iter().take(limit).map(|(_, v)| v).collect())
}

pub(crate) fn list_sessions(db: &Tree, root: &str, limit: usize) -> Result<Vec<SessionInfo>> {
    let mut out = Vec::new();
    for sid in listed_ids(db, root, limit)? {
        let id = String::from_utf8(sid.to_vec())
            .map_err(|_| PersistenceError::Corrupt("a session id is not UTF-8".into()))?;
        let s = get_session(db, &id)?
            .ok_or_else(|| PersistenceError::Corrupt(format!("root index names missing session {id:?}")))?;
        let tokens = s.tally().tokens();
        out.push(SessionInfo {
            agent_name: s.agent_name,
            created_at: format_timestamp(s.created_ms),
            message_count: s.message_count,
            total_tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
            title: s.title,
            mode: s.mode,
            id,
        });
    }
    Ok(out)
}

pub(crate) fn delete_session(db: &Tree, sid: &str) -> Result<(Writes, bool)> {
    let mut w = db.writes();
    let Some(s) = get_session(db, sid)? else {
        return Ok((w, false));
    };
    let mut refs = Refs::default();
    for (key, m) in session_messages(db, sid)? {
        refs.release(&m);
        w.remove(key);
        unindex_message(&mut w, &m);
    }
    for k in db.keys(keys::metadata_of(sid)) {
        w.remove(k?);
    }
    unlist_session(&mut w, &s, sid);
    refs.finish(db, &mut w)?;
    Ok((w, true))
}

/// Removes a message's index keys (`I`, `U`, `C`).
pub(crate) fn unindex_message(w: &mut Writes, m: &StoredMessage) {
    w.remove(keys::numbered(keys::BY_ID, m.id));
    w.remove(keys::numbered(keys::USER, m.id));
    if let Some(at) = m.compacted_ms {
        w.remove(keys::compacted(as_u64(at), m.id));
    }
}

/// Removes a session's record and its listing keys (`S`, `R`, `L`).
pub(crate) fn unlist_session(w: &mut Writes, s: &StoredSession, sid: &str) {
    w.remove(keys::by_root(&s.project_root, as_u64(s.created_ms), s.seq));
    w.remove(keys::rootless(as_u64(s.created_ms), s.seq));
    w.remove(keys::session(sid));
}

/// Sets the session's mode (`mode`) or title.
pub(crate) fn set_session_text(db: &Tree, sid: &str, mode: bool, value: &str) -> Result<Writes> {
    let mut s = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    if mode {
        s.mode = Some(value.to_owned());
    } else {
        s.title = Some(value.to_owned());
    }
    let mut w = db.writes();
    w.session(sid, &s)?;
    Ok(w)
}

pub(crate) fn append_message(db: &Tree, m: NewMessage, now: i64) -> Result<(Writes, StoredMessage)> {
    let mut session = get_session(db, &m.session_id)?.ok_or_else(|| session_not_found(&m.session_id))?;
    let id = next_id(db)?;
    session.next_ord += 1;
    session.message_count += 1;
    session.last_accessed_ms = Some(now);
    let usage = m.usage.map(|u| {
        [u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_creation_tokens, u.thinking_tokens]
    });
    if let Some(u) = usage {
        session.count(m.agent.as_deref(), u.map(Some));
    }
    let key = keys::message(&m.session_id, session.next_ord);
    let record = StoredMessage {
        id,
        role: role_byte(m.role),
        content: m.content,
        full_content: m.full_content,
        tool_calls: m.tool_calls,
        tool_call_id: m.tool_call_id,
        usage,
        agent_name: m.agent,
        created_ms: now,
        completed_ms: None,
        compacted_ms: None,
        bodies: [None; 3],
    };
    let mut w = db.writes();
    let mut stored = record.clone();
    let mut refs = Refs::default();
    refs.intern(db, &mut stored)?;
    refs.finish(db, &mut w)?;
    w.session(&m.session_id, &session)?;
    w.index(keys::numbered(keys::BY_ID, id), key.clone());
    if m.role == Role::User {
        w.index(keys::numbered(keys::USER, id), key.clone());
    }
    w.message(key, &stored)?;
    let mut counts = crate::ledger::Counts::default();
    let root = crate::ledger::root_of(db, &m.session_id, &session)?;
    counts.add(
        &m.session_id,
        root.as_deref(),
        now,
        record.agent_name.as_deref(),
        usage.map_or([None; 5], |u| u.map(Some)),
    );
    counts.finish(db, &mut w)?;
    Ok((w, record))
}

/// The session's active rows (not compacted), in conversation order.
pub(crate) fn active_rows(db: &Tree, sid: &str) -> Result<Vec<ContextRow>> {
    session_messages(db, sid)?
        .into_iter()
        .filter(|(_, m)| m.compacted_ms.is_none())
        .map(|(_, m)| {
            let m = &resolve(db, m)?;
            Ok(ContextRow { message: to_message(sid, m)?, complete: m.completed_ms.is_some() })
        })
        .collect()
}

pub(crate) fn load_all(db: &Tree, sid: &str) -> Result<Vec<Message>> {
    read_messages(db, sid)?.iter().map(|m| Ok(to_message(sid, m)?)).collect()
}

pub(crate) fn recent_user_messages(db: &Tree, limit: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for kv in db.index_scan([keys::USER]).rev() {
        if out.len() >= limit {
            break;
        }
        let (_, key) = kv?;
        let Some(m) = db.message(&key)? else { continue };
        if let Some(c) = resolve(db, m)?.content.filter(|c| !c.is_empty()) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The content of the last message of `role` (in conversation order) that has one.
pub(crate) fn last_content(db: &Tree, sid: &str, role: Role) -> Result<String> {
    let want = role_byte(role);
    for kv in db.messages(keys::messages_of(sid)).rev() {
        let (_, m) = kv?;
        if m.role == want && (m.content.is_some() || m.bodies[0].is_some()) {
            return Ok(resolve(db, m)?.content.unwrap_or_default());
        }
    }
    Ok(String::new())
}

pub(crate) fn has_pending_tool_calls(db: &Tree, sid: &str) -> Result<bool> {
    for kv in db.messages(keys::messages_of(sid)).rev() {
        let (_, m) = kv?;
        if m.compacted_ms.is_none() {
            return Ok(role_of(m.role)? == Role::Assistant && (m.tool_calls.is_some() || m.bodies[2].is_some()));
        }
    }
    Ok(false)
}

/// Completes message `message_id`; returns the batch and its session.
pub(crate) fn mark_complete(db: &Tree, message_id: i64, now: i64) -> Result<(Writes, Option<String>)> {
    let missing = || anyhow::Error::from(PersistenceError::MessageNotFound(message_id));
    let id = u64::try_from(message_id).map_err(|_| missing())?;
    let key = db.index(keys::numbered(keys::BY_ID, id))?.ok_or_else(missing)?;
    let mut m = db.message(&key)?.ok_or_else(missing)?;
    m.completed_ms = Some(now);
    let session = session_of(&key);
    let mut w = db.writes();
    w.message(key, &m)?;
    Ok((w, session))
}

/// Usage by agent, as the session record keeps it (O(agents)).
pub(crate) fn usage_groups(db: &Tree, sid: &str) -> Result<Vec<(String, SessionUsage)>> {
    Ok(get_session(db, sid)?.map(|s| s.tally().groups()).unwrap_or_default())
}

/// The usage a session's stored messages add up to.
pub(crate) fn counted_usage(db: &Tree, sid: &str) -> Result<UsageTally> {
    let mut tally = UsageTally::default();
    for (_, m) in session_messages(db, sid)? {
        tally.add(m.agent_name.as_deref(), m.counters());
    }
    Ok(tally)
}

pub(crate) fn get_metadata(db: &Tree, sid: &str, key: &str) -> Result<Option<String>> {
    db.value(sid, key)
}

pub(crate) fn set_metadata(db: &Tree, sid: &str, key: &str, value: &str) -> Result<Writes> {
    if get_session(db, sid)?.is_none() {
        return Err(session_not_found(sid));
    }
    let mut w = db.writes();
    w.value(sid, key, value)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::health;
    use crate::rows::StoredSessionV1;
    use crate::schema::upgrade;
    use koda_persistence_api::TokenUsage;

    fn usage(p: i64, c: i64) -> Option<TokenUsage> {
        Some(TokenUsage {
            prompt_tokens: p,
            completion_tokens: c,
            cache_read_tokens: 1,
            cache_creation_tokens: 0,
            thinking_tokens: 2,
        })
    }

    /// A store an earlier build wrote keeps its session records at format 1,
    /// without usage: opening it upgrades them once, counting the messages.
    #[test]
    fn format_one_session_records_are_upgraded_with_their_usage() -> Result<()> {
        let db = sled::Config::new().temporary(true).open()?;
        let db = Tree::unlock(db, None, std::path::Path::new("temporary"), None)?;
        db.apply(create_session(&db, "s", "main", "/r", 1)?)?;
        for (agent, u) in [(None, usage(5, 1)), (Some("x"), usage(i64::MAX, 0)), (None, None)] {
            let mut m = NewMessage::message("s", Role::Assistant, Some("a"), None, None, None, agent);
            m.usage = u;
            db.apply(append_message(&db, m, 2)?.0)?;
        }
        let want = usage_groups(&db, "s")?;
        assert_eq!(want.len(), 2, "{want:?}");
        // Rewrite the record as an earlier build stored it.
        downgrade(&db)?;
        assert!(get_session(&db, "s").is_err(), "a format-1 record is not read as format 2");
        assert_eq!(upgrade(&db)?, 1);
        assert_eq!(usage_groups(&db, "s")?, want);
        assert_eq!(upgrade(&db)?, 0, "nothing is upgraded twice");
        assert_eq!(health(&db)?.problems, Vec::<String>::new());
        // The store's own check sees kept usage that left its rows.
        let mut s = get_session(&db, "s")?.ok_or_else(|| anyhow::anyhow!("no session"))?;
        s.count(Some("x"), [Some(1), None, None, None, None]);
        let mut w = db.writes();
        w.session("s", &s)?;
        db.apply(w)?;
        let problems = health(&db)?.problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("usage"), "{problems:?}");
        Ok(())
    }

    /// Rewrites every session record of `db` as an earlier build stored it
    /// (format 1: a running token total, no usage by agent).
    fn downgrade(db: &Tree) -> Result<()> {
        let ids: Vec<String> = db.sessions().map(|kv| kv.map(|(sid, _)| sid)).collect::<Result<_>>()?;
        for sid in ids {
            let s = get_session(db, &sid)?.ok_or_else(|| anyhow::anyhow!("no session {sid}"))?;
            let total_tokens = s.tally().tokens();
            let old = StoredSessionV1 {
                agent_name: s.agent_name,
                project_root: s.project_root,
                created_ms: s.created_ms,
                seq: s.seq,
                last_accessed_ms: s.last_accessed_ms,
                title: s.title,
                mode: s.mode,
                message_count: s.message_count,
                total_tokens,
                next_ord: s.next_ord,
            };
            db.put_raw(keys::session(&sid), encode(&old)?)?;
        }
        Ok(())
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_dir(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }

    const UPGRADE_CHILD: &str = "KODA_SLED_UPGRADE_CHILD";

    /// The child of `an_upgrade_killed_midway_is_finished_by_the_next_open`:
    /// opens the store it is given, says so, upgrades it and flushes.
    #[test]
    #[ignore = "run as a child process by an_upgrade_killed_midway_is_finished_by_the_next_open"]
    fn upgrade_child() -> Result<()> {
        use std::io::Write as _;
        let Ok(path) = std::env::var(UPGRADE_CHILD) else {
            return Ok(());
        };
        let db = Tree::unlock(sled::Config::new().path(path).open()?, None, std::path::Path::new("test"), None)?;
        println!("open");
        std::io::stdout().flush()?;
        let n = upgrade(&db)?;
        db.flush()?;
        println!("upgraded {n}");
        Ok(())
    }

    /// A process killed (SIGKILL) while it upgrades a format-1 store leaves
    /// one the next open finishes: every session at format 2 with the usage
    /// its messages add up to, nothing else changed, the store's own check
    /// clean. Kills land from just after the store opened to past the end
    /// of the upgrade.
    #[test]
    fn an_upgrade_killed_midway_is_finished_by_the_next_open() -> Result<()> {
        use std::io::BufRead as _;
        const SESSIONS: usize = 300;
        const ROUNDS: u32 = 12;
        let dir = tempfile::tempdir()?;
        let pristine = dir.path().join("pristine");
        let mut want = Vec::new();
        {
            let db =
                Tree::unlock(sled::Config::new().path(&pristine).open()?, None, std::path::Path::new("test"), None)?;
            for s in 0..SESSIONS {
                let sid = format!("s{s:04}");
                db.apply(create_session(&db, &sid, "main", "/r", 1)?)?;
                for i in 0..20i64 {
                    let agent = ["main", "helper", "x"][(s + i as usize) % 3];
                    let mut m =
                        NewMessage::message(&sid, Role::Assistant, Some("answer"), None, None, None, Some(agent));
                    m.usage = usage(i + 1, s as i64);
                    db.apply(append_message(&db, m, 2)?.0)?;
                }
                let made = get_session(&db, &sid)?.ok_or_else(|| anyhow::anyhow!("no {sid}"))?;
                want.push((sid.clone(), usage_groups(&db, &sid)?, (made.message_count, made.next_ord)));
            }
            downgrade(&db)?;
            db.flush()?;
        }
        let exe = std::env::current_exe()?;
        // A child upgrading a fresh copy of the pristine store at `path`,
        // with its stdout as lines.
        let child = |path: &std::path::Path| -> Result<_> {
            copy_dir(&pristine, path)?;
            let mut c = std::process::Command::new(&exe)
                .args(["--exact", "queries::tests::upgrade_child", "--ignored", "--nocapture"])
                .env(UPGRADE_CHILD, path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let out = c.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            Ok((c, std::io::BufReader::new(out).lines()))
        };
        // How long the child's upgrade takes here, run to completion.
        let (mut c, mut lines) = child(&dir.path().join("timed"))?;
        let mut opened = None;
        let mut upgraded = None;
        for line in lines.by_ref() {
            let line = line?;
            if line == "open" {
                opened = Some(std::time::Instant::now());
            } else if line.starts_with("upgraded ") {
                upgraded = Some((std::time::Instant::now(), line));
            }
        }
        c.wait()?;
        let (Some(opened), Some((done, line))) = (opened, upgraded) else {
            anyhow::bail!("the child never upgraded");
        };
        assert_eq!(line, format!("upgraded {SESSIONS}"));
        let span = done.duration_since(opened);
        let (mut unfinished, mut finished) = (0, 0);
        for round in 0..ROUNDS {
            let path = dir.path().join(format!("round{round}"));
            let (mut c, mut lines) = child(&path)?;
            // Wait for the open, then kill somewhere in 0..=1.2x the upgrade.
            for line in lines.by_ref() {
                if line? == "open" {
                    break;
                }
            }
            std::thread::sleep(span.mul_f64(f64::from(round) * 1.2 / f64::from(ROUNDS - 1)));
            c.kill()?;
            c.wait()?;
            let db = Tree::unlock(sled::Config::new().path(&path).open()?, None, std::path::Path::new("test"), None)?;
            match upgrade(&db)? {
                0 => finished += 1,
                n => {
                    assert!(n <= SESSIONS, "{n}");
                    unfinished += 1;
                }
            }
            assert_eq!(upgrade(&db)?, 0, "round {round}: nothing is upgraded twice");
            for (sid, groups, counters) in &want {
                assert_eq!(&usage_groups(&db, sid)?, groups, "round {round}, session {sid}");
                let s = get_session(&db, sid)?.ok_or_else(|| anyhow::anyhow!("{sid} gone"))?;
                assert_eq!(&(s.message_count, s.next_ord), counters, "round {round}");
            }
            assert_eq!(health(&db)?.problems, Vec::<String>::new(), "round {round}");
        }
        eprintln!(
            "upgrade of {SESSIONS} sessions took {span:?}; {unfinished} of {ROUNDS} kills left it \
             for the next open, {finished} came after it landed"
        );
        assert!(unfinished > 0, "no kill landed before the upgrade did");
        Ok(())
    }
}
