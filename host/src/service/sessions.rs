//! Web UI sign-in: the admin token is exchanged for a session whose random
//! token the browser keeps in a cookie; the store keeps only its sha256,
//! with a CSRF token and an expiry. Signing out deletes it.

use super::Result;
use crate::app::App;
use crate::secrets::{Secret, new_token, token_hash};
use crate::store::{WebSession, now};

/// How long a session lasts from sign-in.
pub const LIFETIME_SECONDS: i64 = 12 * 3600;

/// A session just made: the token for the cookie (never stored) and the
/// session as kept.
pub struct SignedIn {
    pub token: Secret,
    pub session: WebSession,
}

/// A session for `admin_token` when it is an admin token; `None` when not.
pub async fn sign_in(app: &App, admin_token: &str) -> Result<Option<SignedIn>> {
    if admin_token.is_empty() || !app.is_admin(admin_token).await? {
        return Ok(None);
    }
    let token = new_token("ads");
    let t = now();
    let session = WebSession {
        csrf: new_token("csrf").expose().to_string(),
        created_at: t,
        expires_at: t + LIFETIME_SECONDS,
    };
    app.store
        .create_web_session(&token_hash(token.expose()), &session)
        .await?;
    Ok(Some(SignedIn { token, session }))
}

/// The live session of a cookie's token; `None` when there is none or it
/// expired.
pub async fn find(app: &App, cookie_token: &str) -> Result<Option<WebSession>> {
    if cookie_token.is_empty() {
        return Ok(None);
    }
    let found = app.store.web_session(&token_hash(cookie_token)).await?;
    Ok(found.filter(|s| s.expires_at > now()))
}

/// Ends the session of a cookie's token (if any).
pub async fn sign_out(app: &App, cookie_token: &str) -> Result<()> {
    Ok(app
        .store
        .delete_web_session(&token_hash(cookie_token))
        .await?)
}
