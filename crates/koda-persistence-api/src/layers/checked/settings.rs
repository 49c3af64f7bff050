//! [`Checked`] for the [`Settings`] capability.

use anyhow::Result;

use super::Checked;
use crate::error::PersistenceError;
use crate::settings::{MAX_SETTING_KEY_BYTES, MAX_SETTING_VALUE_BYTES, Settings};

/// A key as [`Settings`] allows it.
fn check_key(key: &str) -> Result<(), PersistenceError> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    if key.is_empty() || key.len() > MAX_SETTING_KEY_BYTES || !key.chars().all(allowed) {
        return Err(PersistenceError::InvalidInput(format!(
            "setting key {key:?}: 1 to {MAX_SETTING_KEY_BYTES} bytes of a-z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl<P: Settings> Settings for Checked<P> {
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        check_key(key)?;
        self.inner.get_setting(key).await
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> {
        check_key(key)?;
        if let Some(v) = value {
            if v.contains('\0') {
                return Err(PersistenceError::InvalidInput(format!("setting {key}: a value holds no NUL")).into());
            }
            if v.len() > MAX_SETTING_VALUE_BYTES {
                return Err(PersistenceError::InvalidInput(format!(
                    "setting {key}: a value is at most {MAX_SETTING_VALUE_BYTES} bytes"
                ))
                .into());
            }
        }
        self.inner.set_setting(key, value).await
    }
}
