//! [`Redacting`] for the [`Settings`] capability.

use anyhow::Result;

use super::Redacting;
use crate::settings::Settings;

forwarding!(Settings {
    fn get_setting(&self, key: &str) -> Result<Option<String>>;
    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()>;
});
