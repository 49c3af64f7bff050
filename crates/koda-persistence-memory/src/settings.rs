//! Store-wide settings: the Settings capability.

use anyhow::Result;
use koda_persistence_api::Settings;

use crate::MemoryStore;

#[async_trait::async_trait]
impl Settings for MemoryStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().settings.get(key).cloned())
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        let mut st = self.lock();
        match value {
            Some(v) => st.settings.insert(key.to_owned(), v.to_owned()),
            None => st.settings.remove(key),
        };
        Ok(())
    }
}
