//! Store-wide settings: the Settings capability, under `G` + key (sealed
//! on an encrypted store, as every value is).

use anyhow::Result;
use koda_persistence_api::Settings;

use crate::SledStore;
use crate::keys;

#[async_trait::async_trait]
impl Settings for SledStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |db| db.setting(&key)).await
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        let (key, value) = (key.to_owned(), value.map(str::to_owned));
        self.write(move |db| {
            let mut w = db.writes();
            match &value {
                Some(v) => w.setting(&key, v)?,
                None => w.remove(keys::setting(&key)),
            }
            Ok((w, ()))
        })
        .await
    }
}
