//! A loopback HTTP receiver for outbound notifications: records every
//! request (method, path, headers, body, when) and answers each path with
//! the statuses planned for it, in order, then 200.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// Requests kept at most: a runaway sender cannot grow the test's memory.
const KEEP: usize = 1000;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON ({e}): {}", self.path, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    plan: HashMap<String, VecDeque<(u16, Duration)>>,
}

pub struct Receiver {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    let (status, delay) = {
        let mut inner = inner.lock().unwrap();
        let planned = inner
            .plan
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .unwrap_or((200, Duration::ZERO));
        if inner.requests.len() < KEEP {
            inner.requests.push(Recorded {
                method,
                path,
                headers,
                body: body.to_vec(),
                at: Instant::now(),
            });
        }
        planned
    };
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(record).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}"),
            inner,
            server,
        }
    }

    /// The next requests to `path` get `statuses`, in order; then 200.
    pub fn respond(&self, path: &str, statuses: &[u16]) {
        let plan = statuses.iter().map(|s| (*s, Duration::ZERO)).collect();
        self.inner
            .lock()
            .unwrap()
            .plan
            .insert(path.to_string(), plan);
    }

    /// As `respond`, each answer given only after its delay.
    pub fn respond_slowly(&self, path: &str, answers: &[(u16, Duration)]) {
        let plan = answers.iter().copied().collect();
        self.inner
            .lock()
            .unwrap()
            .plan
            .insert(path.to_string(), plan);
    }

    /// Requests to `path` so far, oldest first.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.inner
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }
}
