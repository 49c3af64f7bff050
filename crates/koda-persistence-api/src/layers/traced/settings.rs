//! [`Traced`] for the [`Settings`] capability.

use anyhow::Result;

use super::Traced;
use crate::settings::Settings;

traced!(Settings {
    fn get_setting(&self, key: &str) -> Result<Option<String>> => None;
    fn set_setting(&self, key: &str, value: Option<&str>) -> Result<()> => None;
});
