//! Usage history that survives pruning: the Ledger capability over
//! migration 11's `usage_ledger`, which every insert and import adds to
//! in its own statement (`queries::add_to_ledger`); a fork, a restore from
//! the trash and a compaction's summary do not.

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::ledger::{GroupKey, Ledger, LedgerSums, UsageBy, UsageQuery, UsageRow, finish};

use crate::PostgresStore;
use crate::exec::{Conn, bytes, int};
use crate::rows::{as_bytes, get, required_string};

async fn usage(c: &Conn, q: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
    let (first, end) = q.days();
    let root = q.root()?.map(as_bytes);
    let agent = q.agent.map(as_bytes);
    let (group, deleted) = match q.by {
        UsageBy::Day | UsageBy::Week | UsageBy::Month => ("l.day", "FALSE"),
        UsageBy::Root => ("COALESCE(l.root, ''::BYTEA)", "FALSE"),
        UsageBy::Agent => ("l.agent", "FALSE"),
        UsageBy::Session => ("l.session_id", "NOT EXISTS (SELECT 1 FROM kp.sessions s WHERE s.id = l.session_id)"),
    };
    // `group` and `deleted` are chosen above, never input.
    let sql = format!(
        "SELECT {group},
                LEAST(SUM(l.prompt), 9223372036854775807)::BIGINT,
                LEAST(SUM(l.completion), 9223372036854775807)::BIGINT,
                LEAST(SUM(l.cache_read), 9223372036854775807)::BIGINT,
                LEAST(SUM(l.cache_creation), 9223372036854775807)::BIGINT,
                LEAST(SUM(l.thinking), 9223372036854775807)::BIGINT,
                LEAST(SUM(l.messages), 9223372036854775807)::BIGINT,
                {deleted}
         FROM kp.usage_ledger l
         WHERE l.day >= $1 AND l.day < $2 AND ($3::BYTEA IS NULL OR l.root = $3)
           AND ($4::BYTEA IS NULL OR l.agent = $4)
         GROUP BY {group}"
    );
    let rows = c.db().rows("usage", &sql, &[int(&first), int(&end), bytes(&root), bytes(&agent)]).await?;
    let rows = rows
        .iter()
        .map(|r| {
            let key = match q.by {
                UsageBy::Day | UsageBy::Week | UsageBy::Month => GroupKey::Day(get(r, 0, "day")?),
                UsageBy::Root | UsageBy::Agent => GroupKey::Text(required_string(r, 0, "usage group")?),
                UsageBy::Session => GroupKey::Text(get(r, 0, "session id")?),
            };
            let mut a = [0; 6];
            for (i, slot) in a.iter_mut().enumerate() {
                *slot = get(r, 1 + i, "usage")?;
            }
            Ok((key, LedgerSums::from_array(a), get(r, 7, "deleted")?))
        })
        .collect::<Result<Vec<_>, PersistenceError>>()?;
    Ok(finish(q.by, rows))
}

#[async_trait::async_trait]
impl Ledger for PostgresStore {
    async fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>> {
        self.with_client(|c| async move { usage(&c, query).await }).await
    }
}
