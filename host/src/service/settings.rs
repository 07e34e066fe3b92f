//! The operator's settings.

use serde_json::{Map, Value};

use super::{Result, ServiceError};
use crate::app::App;
use crate::store::Settings;

pub async fn get(app: &App) -> Result<Settings> {
    Ok(app.store.settings().await?)
}

/// Checks and stores the given settings (each logged as an event in the
/// same transaction), then wakes the loops so they re-read them now.
pub async fn put(app: &App, update: &Map<String, Value>) -> Result<Settings> {
    let values = Settings::validate_update_with(update, app.image_watch_min_seconds)
        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
    let settings = app.store.put_settings(&values).await?;
    tracing::info!(?values, "settings changed");
    app.settings_changed.send_replace(());
    Ok(settings)
}

/// A numeric setting as a form shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberField {
    pub key: &'static str,
    pub value: u64,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

/// The numeric settings with their current values, defaults and limits.
pub async fn number_fields(app: &App) -> Result<Vec<NumberField>> {
    let current = serde_json::to_value(get(app).await?).unwrap_or_default();
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    Ok(crate::store::numeric_settings(app.image_watch_min_seconds)
        .into_iter()
        .map(|(key, min, max)| NumberField {
            key,
            value: current[key].as_u64().unwrap_or_default(),
            default: defaults[key].as_u64().unwrap_or_default(),
            min,
            max,
        })
        .collect())
}

/// Each setting of `update` checked on its own: the errors by setting, so
/// a form shows each beside its field. Empty when all are valid.
pub fn check_each(app: &App, update: &Map<String, Value>) -> Vec<(String, String)> {
    update
        .iter()
        .filter_map(|(key, value)| {
            let one = Map::from_iter([(key.clone(), value.clone())]);
            Settings::validate_update_with(&one, app.image_watch_min_seconds)
                .err()
                .map(|e| (key.clone(), e.to_string()))
        })
        .collect()
}
