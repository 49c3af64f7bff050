//! Store-wide settings: the Settings capability, one row per key in the
//! schema's `settings` table (version 10).

use anyhow::Result;
use koda_persistence_api::Settings;

use crate::PostgresStore;
use crate::exec::{Conn, text};
use crate::rows::get as column;

async fn get(c: &Conn, key: &str) -> Result<Option<String>> {
    let row = c.db().opt("get_setting", "SELECT value FROM kp.settings WHERE key = $1", &[text(&key)]).await?;
    Ok(match row {
        Some(r) => Some(column::<String>(&r, 0, "setting value")?),
        None => None,
    })
}

async fn set(c: &Conn, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) => {
            c.db()
                .execute(
                    "set_setting",
                    "INSERT INTO kp.settings (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[text(&key), text(&v)],
                )
                .await?
        }
        None => c.db().execute("set_setting", "DELETE FROM kp.settings WHERE key = $1", &[text(&key)]).await?,
    };
    Ok(())
}

#[async_trait::async_trait]
impl Settings for PostgresStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        self.with_client(|c| async move { get(&c, key).await }).await
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.with_client(|c| async move { set(&c, key, value).await }).await
    }
}
