//! Registry access for the image watcher: manifest digests by HEAD only
//! (a GET would count against Docker Hub's pull limit), the bearer-token
//! flow with tokens reused while valid, credentials per registry host (as
//! docker resolves them: credential helpers, a credential store, `auths`,
//! identity tokens), and per-host backoff when a registry says 429 or 503.
//!
//! Not oci-client: its digest lookup falls back to a GET whenever a HEAD
//! answer has no digest header (a 401, 404 or 429 among them) and hides
//! `Retry-After`; both matter for a watcher that must be gentle.

pub mod helper;
pub mod reference;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use serde::Serialize;

pub use helper::HelperError;
pub use reference::ImageRef;

use crate::metrics::{Metrics, RegistryResult};
use crate::secrets::Secret;

/// The manifest kinds a tag may point at; a multi-arch tag answers with its
/// index, so its digest is the index digest and never a platform's.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// How long to leave a registry alone after a 429/503 without `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
/// Cap on one whole image lookup (HEADs, scheme fallback, token request),
/// when the configuration gives none.
pub const LOOKUP_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{host}: {message}")]
    Request { host: String, message: String },
    #[error("{host} refused the credentials (HTTP {status})")]
    Auth { host: String, status: u16 },
    #[error("{host} has no {image}")]
    NotFound { host: String, image: String },
    #[error("{host} asked to be left alone ({status}); backing off for {seconds}s")]
    BackedOff {
        host: String,
        status: u16,
        seconds: u64,
    },
    #[error("{host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error(
        "{host} sent no Docker-Content-Digest header (a GET is not made, to spare pull limits)"
    )]
    NoDigest { host: String },
    #[error(
        "{host}: its token service {realm} is not HTTPS, so its credentials are not sent there ({PLAIN_HTTP_RULE})"
    )]
    PlainHttpCredentials { host: String, realm: String },
    #[error("{host}: the lookup of {image} did not finish within {cap:?}")]
    LookupTimeout {
        host: String,
        image: String,
        cap: Duration,
    },
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error("{host} asked for basic auth, and an identity token only works with a token service")]
    IdentityTokenWithBasic { host: String },
    #[error("{0}")]
    Config(String),
}

/// Why plain HTTP was refused, for errors.
const PLAIN_HTTP_RULE: &str =
    "plain HTTP is only for registries on loopback or listed in AUTODEPLOY_INSECURE_REGISTRIES";

/// Whether `host` may be reached over plain HTTP (with whatever credentials
/// it is owed): loopback, as docker allows, or listed by the operator.
fn plain_http_allowed(listed: &[String], host: &str) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || listed.iter().any(|h| same_host(h, host))
}

#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `REGISTRY_ADDR`: the registry deploys push to.
    pub addr: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A docker-style config.json: `credHelpers`, `credsStore` and `auths`.
    pub docker_config: Option<PathBuf>,
    /// Cap on one credential helper run; zero means [`helper::HELPER_TIMEOUT`].
    pub helper_timeout: Duration,
    /// How long a helper's answer is reused; zero means [`HELPER_TTL`].
    pub helper_ttl: Duration,
    /// Hosts reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// A PEM CA to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Cap on one request.
    pub timeout: Duration,
    /// Cap on one whole lookup, every request of it together; zero means
    /// [`LOOKUP_CAP`].
    pub lookup_timeout: Duration,
}

/// How long a credential helper's answer is reused before the helper runs
/// again (cloud registries' passwords last hours; a rotated one is picked
/// up within this).
pub const HELPER_TTL: Duration = Duration::from_secs(300);

/// A credential for one registry host.
#[derive(Clone)]
pub enum Credential {
    Basic {
        user: String,
        password: Secret,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`) for the registry's
    /// token service.
    IdentityToken(Secret),
}

impl Credential {
    /// Tells credentials apart without holding them (a SHA-256 prefix), to
    /// key tokens fetched with one.
    pub fn fingerprint(&self) -> String {
        let whole = match self {
            Credential::Basic { user, password } => {
                crate::secrets::token_hash(&format!("basic\0{user}\0{}", password.expose()))
            }
            Credential::IdentityToken(t) => {
                crate::secrets::token_hash(&format!("identity\0{}", t.expose()))
            }
        };
        whole[..16].to_string()
    }
}

impl From<helper::HelperCredential> for Credential {
    fn from(c: helper::HelperCredential) -> Credential {
        match c {
            helper::HelperCredential::Basic { user, password } => {
                Credential::Basic { user, password }
            }
            helper::HelperCredential::IdentityToken(t) => Credential::IdentityToken(t),
        }
    }
}

/// What a docker config.json says about credentials.
#[derive(Default)]
struct DockerConfig {
    auths: HashMap<String, Credential>,
    /// Host → helper name.
    cred_helpers: HashMap<String, String>,
    creds_store: Option<String>,
}

/// Per-host counters, shown by `GET /api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostStats {
    pub manifest_heads: u64,
    pub token_requests: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub backed_off_for_seconds: Option<u64>,
    #[serde(skip)]
    backoff_until: Option<Instant>,
}

/// (helper, server) → its answer, until an instant.
type HelperAnswers = HashMap<(String, String), (Option<Credential>, Instant)>;
/// A helper run every lookup that needs its answer meanwhile awaits.
type HelperRun = Shared<BoxFuture<'static, Result<Option<Credential>, HelperError>>>;
/// Removes a helper run from the runs under way when dropped, unless a
/// newer run has taken its place.
struct ForgetRun<'a> {
    runs: &'a Mutex<HashMap<(String, String), HelperRun>>,
    key: (String, String),
    run: HelperRun,
}

impl Drop for ForgetRun<'_> {
    fn drop(&mut self) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.get(&self.key).is_some_and(|r| r.ptr_eq(&self.run)) {
            runs.remove(&self.key);
        }
    }
}

/// (host, scope, whose credential) → a bearer token, until an instant.
type Tokens = HashMap<(String, String, String), (Secret, Instant)>;

pub struct Registry {
    /// Built on first use: building it loads the system's CA certificates
    /// (tens of milliseconds with OpenSSL 3), which daemon start-up need not
    /// wait for.
    http: OnceLock<Result<reqwest::Client, String>>,
    /// The extra CA of `config.ca_file`, checked at start.
    extra_ca: Option<reqwest::Certificate>,
    config: RegistryConfig,
    docker: DockerConfig,
    /// Helper answers: (helper, server) → credential (none: the helper
    /// holds nothing for it) until an instant.
    helper_answers: Mutex<HelperAnswers>,
    /// Helper runs under way, by (helper, server): lookups of many images
    /// on one registry at once run its helper once, not once each.
    helper_runs: Mutex<HashMap<(String, String), HelperRun>>,
    /// Bearer tokens by (host, scope, whose credential).
    tokens: Mutex<Tokens>,
    schemes: Mutex<HashMap<String, &'static str>>,
    stats: Mutex<BTreeMap<String, HostStats>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Result<Registry, RegistryError> {
        let extra_ca = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    RegistryError::Config(format!("read CA {}: {e}", path.display()))
                })?;
                Some(reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    RegistryError::Config(format!(
                        "CA {} is not a PEM certificate: {e}",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        let docker = match &config.docker_config {
            Some(path) => read_docker_config(path)?,
            None => DockerConfig::default(),
        };
        Ok(Registry {
            http: OnceLock::new(),
            extra_ca,
            config,
            docker,
            helper_answers: Default::default(),
            helper_runs: Default::default(),
            tokens: Default::default(),
            schemes: Default::default(),
            stats: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Counts lookups and backoffs into the daemon's metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Registry {
        self.metrics = metrics;
        self
    }

    /// The HTTP client, built on first use.
    fn http(&self) -> Result<&reqwest::Client, RegistryError> {
        let built = self.http.get_or_init(|| {
            let mut builder = reqwest::Client::builder()
                .timeout(self.config.timeout)
                .connect_timeout(self.config.timeout);
            if let Some(cert) = &self.extra_ca {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder.build().map_err(|e| e.to_string())
        });
        built
            .as_ref()
            .map_err(|e| RegistryError::Config(format!("cannot set up HTTPS: {e}")))
    }

    pub fn stats(&self) -> BTreeMap<String, HostStats> {
        let now = Instant::now();
        let mut all = self.stats.lock().expect("stats lock").clone();
        for s in all.values_mut() {
            s.backed_off_for_seconds = s
                .backoff_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_secs() + 1);
        }
        all
    }

    fn count(&self, host: &str, f: impl FnOnce(&mut HostStats)) {
        f(self
            .stats
            .lock()
            .expect("stats lock")
            .entry(host.to_string())
            .or_default());
    }

    /// The daemon's credential for `registry`, in this order:
    /// `REGISTRY_ADDR`'s own for its host, then the docker config's
    /// `credHelpers[host]`, `credsStore`, and `auths[host]`. A helper that
    /// holds nothing for the host passes on to the next; a helper that
    /// fails is an error (never silently anonymous).
    async fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let (Some(addr), Some(user), Some(password)) =
            (&self.config.addr, &self.config.user, &self.config.password)
            && same_host(addr, registry)
        {
            return Ok(Some(Credential::Basic {
                user: user.clone(),
                password: password.clone(),
            }));
        }
        let helpers = self
            .docker
            .cred_helpers
            .iter()
            .find(|(host, _)| same_host(host, registry))
            .map(|(_, h)| h.as_str())
            .into_iter()
            .chain(self.docker.creds_store.as_deref());
        for helper in helpers {
            if let Some(c) = self.ask_helper(helper, registry).await? {
                return Ok(Some(c));
            }
        }
        Ok(self
            .docker
            .auths
            .iter()
            .find(|(host, _)| same_host(host, registry))
            .map(|(_, c)| c.clone()))
    }

    /// A helper's answer for `registry`, reused for the helper TTL.
    async fn ask_helper(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Option<Credential>, RegistryError> {
        // Docker Hub's credentials are stored under its v1 index URL.
        let server = if same_host(registry, reference::DOCKER_HUB) {
            "https://index.docker.io/v1/".to_string()
        } else {
            registry.to_string()
        };
        let key = (helper.to_string(), server.clone());
        if let Some((c, until)) = self.helper_answers.lock().expect("helper lock").get(&key)
            && *until > Instant::now()
        {
            return Ok(c.clone());
        }
        let timeout = nonzero(self.config.helper_timeout, helper::HELPER_TIMEOUT);
        let run = self
            .helper_runs
            .lock()
            .expect("helper runs lock")
            .entry(key.clone())
            .or_insert_with(|| {
                let (h, r, s) = (helper.to_string(), registry.to_string(), server.clone());
                async move {
                    helper::get(&h, &r, &s, timeout)
                        .await
                        .map(|a| a.map(Credential::from))
                }
                .boxed()
                .shared()
            })
            .clone();
        // Forgotten once answered, or when this lookup is dropped midway
        // (a later one then starts a run of its own).
        let _forget = ForgetRun {
            runs: &self.helper_runs,
            key: key.clone(),
            run: run.clone(),
        };
        let answer = run.await?;
        let ttl = nonzero(self.config.helper_ttl, HELPER_TTL);
        self.helper_answers
            .lock()
            .expect("helper lock")
            .insert(key, (answer.clone(), Instant::now() + ttl));
        Ok(answer)
    }

    /// Forgets the helpers' answers for `registry` (it refused them: the
    /// next lookup asks the helper again).
    fn forget_helper_answers(&self, registry: &str) {
        self.helper_answers
            .lock()
            .expect("helper lock")
            .retain(|(_, server), _| !same_host(server, registry));
    }

    fn insecure(&self, host: &str) -> bool {
        plain_http_allowed(&self.config.insecure, host)
    }

    /// Sends a request over HTTPS, or for an insecure host HTTPS then plain
    /// HTTP (remembering which one answered), as docker does.
    async fn send(
        &self,
        host: &str,
        path: &str,
        build: impl Fn(String) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let remembered = self.schemes.lock().expect("scheme lock").get(host).copied();
        let schemes: Vec<&'static str> = match remembered {
            Some(s) => vec![s],
            None if self.insecure(host) => vec!["https", "http"],
            None => vec!["https"],
        };
        let mut last = None;
        for scheme in schemes {
            match build(format!("{scheme}://{host}{path}")).send().await {
                Ok(r) => {
                    self.schemes
                        .lock()
                        .expect("scheme lock")
                        .insert(host.to_string(), scheme);
                    return Ok(r);
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(e) = last else {
            return Err(RegistryError::Request {
                host: host.to_string(),
                message: "no scheme to reach it by".into(),
            });
        };
        let mut message = if e.is_timeout() {
            format!("no answer within {:?}", self.config.timeout)
        } else {
            error_chain(&e)
        };
        if e.is_connect() && !self.insecure(host) {
            // Say why plain HTTP was not tried: a registry that only speaks
            // HTTP fails its TLS handshake, which alone reads like a bug.
            message.push_str(&format!(" (HTTPS only: {PLAIN_HTTP_RULE})"));
        }
        Err(RegistryError::Request {
            host: host.to_string(),
            message,
        })
    }

    /// The digest a tag (or digest reference) resolves to, by HEAD, with
    /// `own` (a project's credential) or else the daemon's.
    pub async fn manifest_digest(
        &self,
        image: &ImageRef,
        own: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let host = image.api_host().to_string();
        let cap = if self.config.lookup_timeout.is_zero() {
            LOOKUP_CAP
        } else {
            self.config.lookup_timeout
        };
        // Each request has its own timeout, but a token flow with a scheme
        // fallback makes several: the whole lookup is capped too.
        let result = match tokio::time::timeout(cap, self.lookup(image, &host, own)).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::LookupTimeout {
                host: host.clone(),
                image: image.to_string(),
                cap,
            }),
        };
        self.metrics.registry_request(
            &host,
            match &result {
                Ok(_) => RegistryResult::Ok,
                Err(RegistryError::NotFound { .. }) => RegistryResult::NotFound,
                Err(RegistryError::Auth { .. }) => RegistryResult::Auth,
                Err(RegistryError::BackedOff { .. }) => RegistryResult::BackedOff,
                Err(RegistryError::LookupTimeout { .. }) => RegistryResult::Timeout,
                Err(_) => RegistryResult::Error,
            },
        );
        self.count(&host, |s| match &result {
            Ok(_) => s.last_error = None,
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e.to_string());
            }
        });
        result
    }

    async fn lookup(
        &self,
        image: &ImageRef,
        host: &str,
        own: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        if let Some(until) = self
            .stats
            .lock()
            .expect("stats lock")
            .get(host)
            .and_then(|s| s.backoff_until)
            && until > Instant::now()
        {
            return Err(RegistryError::BackedOff {
                host: host.into(),
                status: 429,
                seconds: (until - Instant::now()).as_secs() + 1,
            });
        }
        let scope = format!("repository:{}:pull", image.repository);
        let path = format!("/v2/{}/manifests/{}", image.repository, image.reference);
        // Tokens are kept per credential: a token one project's credential
        // got is never used for another project's lookup.
        let whose = match own {
            Some(c) => format!("project:{}", c.fingerprint()),
            None => "daemon".to_string(),
        };
        let cached = self
            .cached_token(host, &scope, &whose)
            .map(|t| format!("Bearer {}", t.expose()));
        let mut response = self.head(host, &path, cached.as_deref()).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // Resolved only now: a helper runs when a token is needed, not
            // on every lookup.
            let credential = match own {
                Some(c) => Some(c.clone()),
                None => self.credential(&image.registry).await?,
            };
            let answered = self
                .answer_challenge(
                    host,
                    &scope,
                    &whose,
                    response.headers(),
                    credential.as_ref(),
                )
                .await;
            let auth = match answered {
                Err(e @ RegistryError::Auth { .. }) => {
                    if own.is_none() {
                        self.forget_helper_answers(&image.registry);
                    }
                    return Err(e);
                }
                other => other?,
            };
            response = self.head(host, &path, Some(&auth)).await?;
            if matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                if own.is_none() {
                    self.forget_helper_answers(&image.registry);
                }
                return Err(RegistryError::Auth {
                    host: host.into(),
                    status: response.status().as_u16(),
                });
            }
        }
        match response.status() {
            s if s.is_success() => response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or(RegistryError::NoDigest { host: host.into() }),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                host: host.into(),
                image: image.to_string(),
            }),
            StatusCode::FORBIDDEN => Err(RegistryError::Auth {
                host: host.into(),
                status: 403,
            }),
            s @ (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                let wait = retry_after(response.headers()).unwrap_or(DEFAULT_BACKOFF);
                self.count(host, |st| st.backoff_until = Some(Instant::now() + wait));
                self.metrics.registry_backoff(host);
                Err(RegistryError::BackedOff {
                    host: host.into(),
                    status: s.as_u16(),
                    seconds: wait.as_secs(),
                })
            }
            s => Err(RegistryError::Status {
                host: host.into(),
                status: s.as_u16(),
            }),
        }
    }

    async fn head(
        &self,
        host: &str,
        path: &str,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let http = self.http()?;
        self.count(host, |s| s.manifest_heads += 1);
        self.send(host, path, |url| {
            let req = http.head(url).header(ACCEPT, MANIFEST_TYPES);
            match auth {
                Some(a) => req.header(AUTHORIZATION, a),
                None => req,
            }
        })
        .await
    }

    fn cached_token(&self, host: &str, scope: &str, whose: &str) -> Option<Secret> {
        let tokens = self.tokens.lock().expect("token lock");
        tokens
            .get(&(host.to_string(), scope.to_string(), whose.to_string()))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(t, _)| t.clone())
    }

    /// The `Authorization` value a 401's challenge asks for: basic
    /// credentials, or a bearer token from the realm (fetched with the
    /// credentials if there are any, anonymously otherwise).
    async fn answer_challenge(
        &self,
        host: &str,
        scope: &str,
        whose: &str,
        headers: &HeaderMap,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let basic = |user: &str, password: &Secret| {
            let raw = format!("{user}:{}", password.expose());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            return match credential {
                Some(Credential::Basic { user, password }) => Ok(basic(user, password)),
                Some(Credential::IdentityToken(_)) => {
                    Err(RegistryError::IdentityTokenWithBasic { host: host.into() })
                }
                None => Err(RegistryError::Auth {
                    host: host.into(),
                    status: 401,
                }),
            };
        };
        let params = parse_challenge(params);
        let realm = params.get("realm").ok_or_else(|| RegistryError::Request {
            host: host.into(),
            message: "bearer challenge without a realm".into(),
        })?;
        if credential.is_some() {
            let realm_url = url::Url::parse(realm).map_err(|_| RegistryError::Request {
                host: host.into(),
                message: "bearer challenge with a realm that is not a URL".into(),
            })?;
            let realm_host = realm_url.authority();
            if realm_url.scheme() != "https" && !self.insecure(realm_host) {
                // The token request would carry the password in clear text.
                return Err(RegistryError::PlainHttpCredentials {
                    host: host.into(),
                    realm: format!("{}://{realm_host}", realm_url.scheme()),
                });
            }
        }
        let mut query = vec![("scope", scope.to_string())];
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        self.count(host, |s| s.token_requests += 1);
        let req = match credential {
            // The OAuth2 refresh-token grant, as docker sends it: a POST
            // form, the token in the body (never in the URL).
            Some(Credential::IdentityToken(refresh)) => {
                let mut form = query.clone();
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh.expose().to_string()));
                form.push(("client_id", "autodeploy".into()));
                self.http()?.post(realm).form(&form)
            }
            Some(Credential::Basic { user, password }) => self
                .http()?
                .get(realm)
                .query(&query)
                .header(AUTHORIZATION, basic(user, password)),
            None => self.http()?.get(realm).query(&query),
        };
        let resp = req.send().await.map_err(|e| RegistryError::Request {
            host: host.into(),
            message: format!("token request: {}", error_chain(&e)),
        })?;
        if !resp.status().is_success() {
            return Err(RegistryError::Auth {
                host: host.into(),
                status: resp.status().as_u16(),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = resp.json().await.map_err(|e| RegistryError::Request {
            host: host.into(),
            message: format!("token answer: {e}"),
        })?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| RegistryError::Request {
                host: host.into(),
                message: "token answer without a token".into(),
            })?;
        // Tokens live 60 s unless the registry says otherwise; renew a little early.
        let life = Duration::from_secs(answer.expires_in.unwrap_or(60).saturating_sub(5).max(1));
        self.tokens.lock().expect("token lock").insert(
            (host.to_string(), scope.to_string(), whose.to_string()),
            (Secret::new(token.clone()), Instant::now() + life),
        );
        Ok(format!("Bearer {token}"))
    }

    /// The start-up probe: GET /v2/ on `addr`. 200 or 401 means reachable.
    pub async fn probe(&self, addr: &str) -> Result<u16, String> {
        let http = self.http().map_err(|e| e.to_string())?;
        let resp = self
            .send(addr, "/v2/", |url| http.get(url))
            .await
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            s @ (200 | 401) => Ok(s),
            s => Err(format!("{addr}/v2/ answered HTTP {s}")),
        }
    }
}

fn nonzero(d: Duration, default: Duration) -> Duration {
    if d.is_zero() { default } else { d }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (quoted.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            },
        };
        out.insert(key, value);
        rest = next.trim_start_matches(',').trim();
    }
    out
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// `host[:port]` of a host, URL or docker config key.
fn authority(host: &str) -> &str {
    let h = host
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    h.split('/').next().unwrap_or(h)
}

/// `host[:port]` without the port.
fn host_name(host: &str) -> &str {
    let h = authority(host);
    if let Some(v6) = h.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    h.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(h, |(n, _)| n)
}

fn port(host: &str) -> Option<&str> {
    authority(host)
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Same registry host, ignoring case, a scheme, and a port only one side gives.
pub fn same_host(a: &str, b: &str) -> bool {
    let docker = |h: &str| match h {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    };
    docker(&host_name(a).to_ascii_lowercase()) == docker(&host_name(b).to_ascii_lowercase())
        && match (port(a), port(b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// The credentials a docker config.json gives: `auths` (base64
/// `user:password`, or an `identitytoken`), `credHelpers` and `credsStore`.
fn read_docker_config(path: &std::path::Path) -> Result<DockerConfig, RegistryError> {
    let bad =
        |why: String| RegistryError::Config(format!("docker config {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
        #[serde(default, rename = "credHelpers")]
        cred_helpers: HashMap<String, String>,
        #[serde(default, rename = "credsStore")]
        creds_store: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        identitytoken: Option<String>,
    }
    let file: File = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a docker config: {}", e.classify_name())))?;
    let mut out = DockerConfig::default();
    for (host, helper) in file.cred_helpers {
        if !helper::valid_name(&helper) {
            return Err(bad(format!(
                "credHelpers for {host}: {helper:?} is not a helper name (letters, digits, '-', '_', '.')"
            )));
        }
        out.cred_helpers
            .insert(authority(&host).to_string(), helper);
    }
    if let Some(store) = file.creds_store.filter(|s| !s.is_empty()) {
        if !helper::valid_name(&store) {
            return Err(bad(format!(
                "credsStore {store:?} is not a helper name (letters, digits, '-', '_', '.')"
            )));
        }
        out.creds_store = Some(store);
    }
    for (host, entry) in file.auths {
        let host_key = authority(&host).to_string();
        // An identity token is what docker sends to the token service in
        // place of the password, when there is one.
        if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
            out.auths
                .insert(host_key, Credential::IdentityToken(Secret::new(token)));
            continue;
        }
        let Some(auth) = entry.auth.filter(|a| !a.is_empty()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad(format!("the auth for {host} is not base64")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| bad(format!("the auth for {host} is not text")))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| bad(format!("the auth for {host} is not user:password")))?;
        out.auths.insert(
            host_key,
            Credential::Basic {
                user: user.into(),
                password: Secret::new(password),
            },
        );
    }
    Ok(out)
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    /// The error's category only: the message could quote a password.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_ignoring_case_scheme_and_a_missing_port() {
        assert!(same_host(
            "Registry.Example.com",
            "registry.example.com:5000"
        ));
        assert!(same_host(
            "https://registry.example.com:5000/",
            "registry.example.com:5000"
        ));
        assert!(!same_host(
            "registry.example.com:5000",
            "registry.example.com:5001"
        ));
        assert!(!same_host("registry.example.com", "example.com"));
        assert!(same_host("https://index.docker.io/v1/", "docker.io"));
    }

    #[test]
    fn challenges_and_retry_after_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
    }

    #[test]
    fn docker_configs_give_helpers_a_store_and_identity_tokens() {
        let dir = std::env::temp_dir().join(format!("autodeploy-dockercfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            r#"{"credHelpers":{"https://ecr.example:5000":"ecr-login"},"credsStore":"pass",
                "auths":{"a.example":{"auth":"dTpw"},"b.example":{"identitytoken":"rt"},"c.example":{}}}"#,
        )
        .unwrap();
        let c = read_docker_config(&path).unwrap();
        assert_eq!(c.cred_helpers["ecr.example:5000"], "ecr-login");
        assert_eq!(c.creds_store.as_deref(), Some("pass"));
        assert!(matches!(&c.auths["a.example"], Credential::Basic { user, .. } if user == "u"));
        assert!(
            matches!(&c.auths["b.example"], Credential::IdentityToken(t) if t.expose() == "rt")
        );
        assert!(!c.auths.contains_key("c.example"));
        std::fs::write(&path, r#"{"credsStore":"../../bin/sh"}"#).unwrap();
        let e = read_docker_config(&path).err().unwrap().to_string();
        assert!(e.contains("is not a helper name"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
