//! Store-wide settings: the Settings capability, in `kp_meta` under
//! `setting:<key>` (beside the file's own markers, which no setting key
//! can name).

use anyhow::Result;
use koda_persistence_api::Settings;
use rusqlite::{OptionalExtension, params};

use crate::SqliteStore;

fn meta_key(key: &str) -> String {
    format!("setting:{key}")
}

#[async_trait::async_trait]
impl Settings for SqliteStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let key = meta_key(key);
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT value FROM kp_meta WHERE key = ?1")?
                .query_row(params![key], |r| r.get::<_, String>(0))
                .optional()?)
        })
        .await
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        let (key, value) = (meta_key(key), value.map(str::to_owned));
        self.write(move |tx| {
            match &value {
                Some(v) => tx
                    .prepare_cached(
                        "INSERT INTO kp_meta (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(params![key, v])?,
                None => tx.prepare_cached("DELETE FROM kp_meta WHERE key = ?1")?.execute(params![key])?,
            };
            Ok(())
        })
        .await
    }
}
