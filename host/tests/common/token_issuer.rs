//! A small token service for docker-registry's `auth: token`, run by the
//! test: it refuses bad basic credentials and unknown services, grants each
//! account only the actions it asked for and may have, and signs RS256 JWTs
//! with a key made for the test (the registry trusts its certificate).
//! Also takes the OAuth2 refresh-token grant (a POST form) for refresh
//! tokens given to an account. Records every request it gets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::x509::{X509Builder, X509NameBuilder};
use serde_json::json;

/// Actions on repositories whose name starts with `prefix` ("" for all).
#[derive(Clone, Debug)]
pub struct Grant {
    pub prefix: String,
    pub actions: Vec<String>,
}

pub fn grant(prefix: &str, actions: &[&str]) -> Grant {
    Grant {
        prefix: prefix.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

#[derive(Clone, Debug)]
pub struct Account {
    pub user: String,
    pub password: String,
    pub grants: Vec<Grant>,
}

pub fn account(user: &str, password: &str, grants: Vec<Grant>) -> Account {
    Account {
        user: user.into(),
        password: password.into(),
        grants,
    }
}

/// One request to the token endpoint, as the issuer saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The basic-auth user, `None` when anonymous.
    pub user: Option<String>,
    /// The raw `Authorization` header, to check what went over the wire.
    pub authorization: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// What the token grants, as `repository:NAME:ACTION,...`.
    pub granted: Vec<String>,
    pub status: u16,
    /// `GET`, or `POST` for a form grant.
    pub method: &'static str,
    /// The form's `grant_type`, for a POST.
    pub grant_type: Option<String>,
    /// The form's `client_id`, for a POST.
    pub client_id: Option<String>,
}

struct Issuer {
    service: String,
    issuer: String,
    key: PKey<Private>,
    cert_der: Vec<u8>,
    accounts: Vec<Account>,
    anonymous: Vec<Grant>,
    requests: Mutex<Vec<TokenRequest>>,
    /// Refresh token → the account user it stands for.
    refresh_tokens: Mutex<Vec<(String, String)>>,
}

pub struct TokenIssuer {
    /// The `realm` the registry announces: `http://IP:PORT/token`.
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificate of the signing key, for the registry's `rootcertbundle`.
    pub cert: PathBuf,
    state: Arc<Issuer>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TokenIssuer {
    /// Listens on `ip` (any free port) over plain HTTP; writes its
    /// certificate into `dir`. Anonymous requests get `anonymous` grants.
    pub async fn start(
        ip: &str,
        dir: &Path,
        accounts: Vec<Account>,
        anonymous: Vec<Grant>,
    ) -> TokenIssuer {
        std::fs::create_dir_all(dir).unwrap();
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "autodeploy test token issuer")
            .unwrap();
        let name = name.build();
        let mut cert = X509Builder::new().unwrap();
        cert.set_version(2).unwrap();
        cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        let now = unix_now();
        cert.set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::from_unix(now + 2 * 86400).unwrap())
            .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = cert.build();
        let cert_path = dir.join("token-issuer.pem");
        std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();

        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Issuer {
            service: "autodeploy-test-registry".into(),
            issuer: "autodeploy-test-issuer".into(),
            key,
            cert_der: cert.to_der().unwrap(),
            accounts,
            anonymous,
            requests: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/token", get(token).post(token_form))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenIssuer {
            realm: format!("http://{addr}/token"),
            service: state.service.clone(),
            issuer: state.issuer.clone(),
            cert: cert_path,
            state,
            server,
        }
    }

    /// Lets `token` stand for account `user` in the refresh-token grant.
    pub fn add_refresh_token(&self, token: &str, user: &str) {
        self.state
            .refresh_tokens
            .lock()
            .unwrap()
            .push((token.into(), user.into()));
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message}]})),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Issuer>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let mut service = None;
    let mut scopes = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "service" => service = Some(v.into_owned()),
            "scope" => scopes.extend(v.split(' ').map(str::to_string)),
            _ => {}
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = TokenRequest {
        user: None,
        authorization: authorization.clone(),
        service: service.clone(),
        scopes: scopes.clone(),
        granted: Vec::new(),
        status: 200,
        method: "GET",
        grant_type: None,
        client_id: None,
    };
    let answer = answer(&s, &mut record, authorization.as_deref(), &service, &scopes);
    record.status = answer.status().as_u16();
    s.requests.lock().unwrap().push(record);
    answer
}

/// The OAuth2 form grant: only `grant_type=refresh_token` with a known
/// refresh token is taken; the token stands for its account.
async fn token_form(State(s): State<Arc<Issuer>>, headers: HeaderMap, body: String) -> Response {
    let mut form = std::collections::HashMap::new();
    let mut scopes = Vec::new();
    for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
        match &*k {
            "scope" => scopes.extend(v.split(' ').map(str::to_string)),
            _ => {
                form.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    let mut record = TokenRequest {
        user: None,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        service: form.get("service").cloned(),
        scopes: scopes.clone(),
        granted: Vec::new(),
        status: 200,
        method: "POST",
        grant_type: form.get("grant_type").cloned(),
        client_id: form.get("client_id").cloned(),
    };
    let user = s
        .refresh_tokens
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _)| Some(t) == form.get("refresh_token"))
        .map(|(_, u)| u.clone());
    let answer = match (record.grant_type.as_deref(), user) {
        (Some("refresh_token"), Some(user)) => {
            match s.accounts.iter().find(|a| a.user == user) {
                // As the account would, through its basic credentials.
                Some(a) => {
                    let basic = format!(
                        "Basic {}",
                        STANDARD.encode(format!("{}:{}", a.user, a.password))
                    );
                    let service = record.service.clone();
                    answer(&s, &mut record, Some(&basic), &service, &scopes)
                }
                None => refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "no such account"),
            }
        }
        (Some("refresh_token"), None) => refuse(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "unknown refresh token",
        ),
        _ => refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant not supported",
        ),
    };
    record.status = answer.status().as_u16();
    s.requests.lock().unwrap().push(record);
    answer
}

fn answer(
    s: &Issuer,
    record: &mut TokenRequest,
    authorization: Option<&str>,
    service: &Option<String>,
    scopes: &[String],
) -> Response {
    let grants = match authorization {
        None => &s.anonymous,
        Some(value) => {
            let decoded = value
                .strip_prefix("Basic ")
                .and_then(|b| STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "not basic auth");
            };
            record.user = Some(user.to_string());
            match s
                .accounts
                .iter()
                .find(|a| a.user == user && a.password == password)
            {
                Some(a) => &a.grants,
                None => {
                    return refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
                }
            }
        }
    };
    if service.as_deref() != Some(s.service.as_str()) {
        return refuse(StatusCode::BAD_REQUEST, "DENIED", "unknown service");
    }
    // Only what was asked for, and of that only what the account may do.
    let mut access = Vec::new();
    for scope in scopes {
        let (Some((kind, rest)), Some((_, asked))) =
            (scope.split_once(':'), scope.rsplit_once(':'))
        else {
            return refuse(StatusCode::BAD_REQUEST, "DENIED", "malformed scope");
        };
        let name = rest.rsplit_once(':').map_or(rest, |(n, _)| n);
        if kind != "repository" {
            continue;
        }
        let actions: Vec<&str> = asked
            .split(',')
            .filter(|a| {
                grants
                    .iter()
                    .any(|g| name.starts_with(&g.prefix) && g.actions.iter().any(|x| x == a))
            })
            .collect();
        if !actions.is_empty() {
            record
                .granted
                .push(format!("repository:{name}:{}", actions.join(",")));
            access.push(json!({"type": "repository", "name": name, "actions": actions}));
        }
    }
    let now = unix_now();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [STANDARD.encode(&s.cert_der)]});
    let claims = json!({
        "iss": s.issuer,
        "sub": record.user.clone().unwrap_or_default(),
        "aud": s.service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", s.requests.lock().unwrap().len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &s.key).unwrap();
    signer.update(signing_input.as_bytes()).unwrap();
    let signature = URL_SAFE_NO_PAD.encode(signer.sign_to_vec().unwrap());
    let token = format!("{signing_input}.{signature}");
    axum::Json(json!({"token": token, "access_token": token, "expires_in": 300})).into_response()
}
