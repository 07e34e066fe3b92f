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
