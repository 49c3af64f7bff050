//! Stored text replaced in place: the Rewrite capability.
//!
//! One atomic batch per call, under the write lock: the session record,
//! its metadata values and the messages with their new text (sealed
//! again, bound to their keys, in an encrypted store), the bodies they
//! take and let go ([`Refs`]). sled's log keeps an overwritten value
//! until it rewrites that segment, which this layer cannot force.

use std::collections::BTreeMap;

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::session_not_found;
use koda_persistence_api::rewrite::{Rewrite, SessionText};

use crate::SledStore;
use crate::bodies::Refs;
use crate::db::{Tree, Writes};
use crate::keys;
use crate::queries::get_session;
use crate::rows::session_of;

fn rewrite(db: &Tree, sid: &str, t: &SessionText) -> Result<Writes> {
    let mut s = get_session(db, sid)?.ok_or_else(|| session_not_found(sid))?;
    let mut w = db.writes();
    if t.title.is_some() || t.mode.is_some() {
        if let Some(title) = &t.title {
            s.title = Some(title.clone());
        }
        if let Some(mode) = &t.mode {
            s.mode = Some(mode.clone());
        }
        w.session(sid, &s)?;
    }
    for e in &t.metadata {
        w.value(sid, &e.key, &e.value)?;
    }
    let mut refs = Refs::default();
    let mut changed = BTreeMap::new();
    for mt in &t.messages {
        let not_here =
            || PersistenceError::InvalidInput(format!("message {} is not a message of session {sid}", mt.id));
        let id = u64::try_from(mt.id).map_err(|_| not_here())?;
        let key = db.index(keys::numbered(keys::BY_ID, id))?.ok_or_else(not_here)?;
        if session_of(&key).as_deref() != Some(sid) {
            return Err(not_here().into());
        }
        let Some(mut m) = db.message(&key)? else { return Err(not_here().into()) };
        for (i, value) in [&mt.content, &mt.full_content, &mt.tool_calls].into_iter().enumerate() {
            let Some(value) = value else { continue };
            if let Some(old) = m.bodies.get_mut(i).and_then(Option::take) {
                refs.release_one(old);
            }
            let slot = match i {
                0 => &mut m.content,
                1 => &mut m.full_content,
                _ => &mut m.tool_calls,
            };
            *slot = Some(value.clone());
        }
        refs.intern(db, &mut m)?;
        changed.insert(key, m);
    }
    for (key, m) in changed {
        w.message(key, &m)?;
    }
    refs.finish(db, &mut w)?;
    Ok(w)
}

#[async_trait::async_trait]
impl Rewrite for SledStore {
    async fn rewrite_session(&self, session_id: &str, text: &SessionText) -> Result<()> {
        let (sid, text) = (session_id.to_owned(), text.clone());
        let forget = sid.clone();
        self.write_then(move |db| Ok((rewrite(db, &sid, &text)?, ())), move |cache, ()| cache.changed(&forget)).await
    }

    async fn reclaim(&self) -> Result<String> {
        let bytes = self
            .read(|db| {
                db.flush()?;
                db.size_on_disk()
            })
            .await?;
        Ok(format!(
            "sled: flushed ({bytes} bytes on disk); its log keeps an overwritten value until it rewrites that \
             segment: copy the store (koda-store copy) to leave none behind"
        ))
    }
}
