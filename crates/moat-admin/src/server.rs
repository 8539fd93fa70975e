//! The admin HTTP listener: axum on its own thread and current_thread runtime, so the
//! proxy's workers never wait on it. JSON everywhere but `/metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use moat_proxy::Config;
use moat_proxy::config::AdminConfig;
use moat_proxy::control::{Control, ReloadError};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::api::{self, BadRequest, BanRequest, BanView};
use crate::listener::{Bounded, Peer};
use crate::lockout::Lockout;

/// Largest request body accepted (a ban request is a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;
/// Time requests in flight get to finish once the listener is asked to stop.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token could not be read (`admin.token_file`).
    #[error(transparent)]
    Token(#[from] moat_proxy::ConfigError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr} for the admin API: {source} (set [admin] listen, pass \
         --admin ADDR, or set [admin] enabled = false)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin thread or its runtime could not be started.
    #[error("cannot start the admin API's thread: {0}")]
    Thread(std::io::Error),
}

/// The running admin listener; dropping it stops it.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Admin requests refused, by the reason of `moat_admin_requests_refused_total`.
#[derive(Debug, Default)]
struct Refused {
    token: AtomicU64,
    banned: AtomicU64,
}

/// Reads the configuration again for `POST /reload`: the file the proxy started with, with
/// the same command-line overrides, so a reload compares like with like. The error is what
/// the operator reads.
pub type ConfigLoader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Everything the handlers share.
struct App {
    control: Control,
    loader: Option<ConfigLoader>,
    /// SHA-256 of the token: comparing digests takes the same time whatever the guess.
    token: Option<[u8; 32]>,
    lockout: Mutex<Lockout>,
    refused: Refused,
    addr: SocketAddr,
}

/// Starts the admin API described by `config` for the proxy behind `control`; `loader`
/// reads the configuration again for `POST /reload` (`None`: started without a file). `Ok(None)` when `admin.enabled` is false. Binds
/// before returning, so a taken port is an error here.
pub fn start(
    control: Control,
    loader: Option<ConfigLoader>,
    config: &AdminConfig,
) -> Result<Option<AdminServer>, AdminError> {
    if !config.enabled {
        return Ok(None);
    }
    let token = config.resolve_token()?;
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AdminError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Listen {
        addr: config.listen,
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Thread)?;
    let app = Arc::new(App {
        control,
        loader,
        token: token.as_deref().map(digest),
        lockout: Mutex::new(Lockout::new(
            config.lockout_after,
            config.lockout_window,
            config.lockout_for,
        )),
        refused: Refused::default(),
        addr,
    });
    let router = router(app.clone());
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("moat-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => Bounded::new(l),
                    Err(e) => {
                        tracing::error!(error = %e, "admin API cannot use its listener");
                        return;
                    }
                };
                let service = router.into_make_service_with_connect_info::<Peer>();
                let mut asked = stopped.clone();
                let served = axum::serve(listener, service).with_graceful_shutdown(async move {
                    let _ = asked.wait_for(|stop| *stop).await;
                });
                // A client that never finishes its request must not hold up moat's exit.
                let mut asked = stopped;
                let grace = async move {
                    let _ = asked.wait_for(|stop| *stop).await;
                    tokio::time::sleep(STOP_GRACE).await;
                };
                tokio::select! {
                    served = served => {
                        if let Err(e) = served {
                            tracing::error!(error = %e, "admin API stopped");
                        }
                    }
                    () = grace => {}
                }
            });
        })
        .map_err(AdminError::Thread)?;
    tracing::info!(
        listen = %addr,
        token = token.is_some(),
        "admin API listening"
    );
    Ok(Some(AdminServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }))
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/sources", get(sources))
        .route("/clients", get(clients))
        .route(
            "/bans",
            get(list_bans).post(add_ban).delete(remove_ban_query),
        )
        .route("/bans/{*net}", delete(remove_ban_path))
        .route("/reload", post(reload))
        .route("/drain", post(drain))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests without an early exit.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// A JSON error reply: `{"error": text}`.
fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": text.into() }))).into_response()
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn peer(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<Peer>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            moat_guard::canonical(c.0.0.ip())
        })
}

/// Checks the bearer token when one is configured; an address that keeps failing is
/// locked out, even with the right token, for `admin.lockout_for`.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match check_token(&app, &req, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal,
    }
}

/// The refusal for `req`, if any; counts it and updates the lockout.
fn check_token(app: &App, req: &Request, now: Instant) -> Result<(), Response> {
    let Some(expected) = &app.token else {
        return Ok(());
    };
    let ip = peer(req);
    let mut lockout = app.lockout.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(left) = lockout.check(ip, now) {
        app.refused.banned.fetch_add(1, Ordering::Relaxed);
        let secs = left.as_secs().max(1);
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed token checks from {ip}: locked out for {secs}s"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(resp);
    }
    let presented = bearer(req.headers());
    if presented.is_some_and(|t| same_digest(expected, &digest(t))) {
        lockout.succeed(ip);
        return Ok(());
    }
    let locked_for = lockout.fail(ip, now);
    app.refused.token.fetch_add(1, Ordering::Relaxed);
    if let Some(d) = locked_for {
        tracing::warn!(
            source = %ip,
            secs = d.as_secs(),
            "admin API: locked out after repeated wrong tokens"
        );
    }
    let text = if presented.is_some() {
        "wrong bearer token"
    } else {
        "missing bearer token: send `Authorization: Bearer <admin.token>`"
    };
    let mut resp = error(StatusCode::UNAUTHORIZED, text);
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(resp)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {} (endpoints: /metrics, /status, /sources, \
             /clients, /bans, /reload, /drain)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// `?a=b` parameters, or a JSON 400 when the query does not decode.
fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, BadRequest> {
    q.map(|Query(q)| q)
        .map_err(|e| BadRequest(format!("invalid query string: {}", e.body_text())))
}

/// The `/metrics` body: the exposition of the snapshot, with the admin API's own counter
/// (kept here, where requests are refused) filled in.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut snapshot = app.control.snapshot();
    snapshot.admin_requests_refused = vec![
        ("token", app.refused.token.load(Ordering::Relaxed)),
        ("banned", app.refused.banned.load(Ordering::Relaxed)),
    ];
    let body = crate::exposition::render(&snapshot);
    (
        [(header::CONTENT_TYPE, crate::exposition::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// `/status`: the proxy's status plus where it listens and the guard's counts.
#[derive(Debug, Serialize)]
struct StatusView {
    #[serde(flatten)]
    status: moat_proxy::control::Status,
    proxy_listen: String,
    backend_address: String,
    workers: usize,
    admin_listen: String,
    guard: GuardView,
}

#[derive(Debug, Serialize)]
struct GuardView {
    admitted: u64,
    refused: HashMap<&'static str, u64>,
    bans_issued: u64,
    bans_issued_admin: u64,
    sources: usize,
    max_clients: u32,
}

async fn status(
    State(app): State<Arc<App>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, BadRequest> {
    api::only_params(&query(q)?, &[])?;
    let config = app.control.config();
    let guard = app.control.guard();
    let stats = guard.stats();
    let view = StatusView {
        status: app.control.status(),
        proxy_listen: config.proxy.listen.to_string(),
        backend_address: config.backend.address.to_string(),
        workers: config.proxy.workers,
        admin_listen: app.addr.to_string(),
        guard: GuardView {
            admitted: stats.admitted,
            refused: stats.rejected.iter().copied().collect(),
            bans_issued: stats.bans_issued,
            bans_issued_admin: stats.bans_issued_admin,
            sources: stats.sources,
            max_clients: guard.config().max_clients,
        },
    };
    Ok(axum::Json(view).into_response())
}

async fn sources(
    State(app): State<Arc<App>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let n = api::parse_top(&query(q)?)?;
    let top = app.control.guard().top_sources(n, Instant::now());
    let by_connections: Vec<_> = top
        .by_connections
        .iter()
        .map(|s| json!({ "ip": s.ip.to_string(), "connections": s.connections }))
        .collect();
    let by_refusals: Vec<_> = top
        .by_refusals
        .iter()
        .map(|s| {
            json!({
                "ip": s.ip.to_string(),
                "refusals": s.refusals,
                "strikes": s.strikes,
                "bans": s.bans,
                "banned_secs": s.banned_for.map(|d| d.as_secs().max(1)),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "by_connections": by_connections,
        "by_refusals": by_refusals,
        "scanned": top.scanned,
        "sources": top.sources,
    }))
    .into_response())
}

async fn clients(
    State(app): State<Arc<App>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let n = api::parse_top(&query(q)?)?;
    let clients = app.control.top_clients(n).await;
    Ok(axum::Json(json!({ "clients": clients })).into_response())
}

async fn list_bans(
    State(app): State<Arc<App>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, BadRequest> {
    api::only_params(&query(q)?, &[])?;
    let now = Instant::now();
    let bans: Vec<BanView> = app
        .control
        .guard()
        .bans(now)
        .iter()
        .map(|(net, ban)| BanView::new(*net, ban, now))
        .collect();
    Ok(axum::Json(json!({ "bans": bans })).into_response())
}

async fn add_ban(
    State(app): State<Arc<App>>,
    ConnectInfo(Peer(by)): ConnectInfo<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, BadRequest> {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return Ok(error(
                e.status(),
                format!("cannot read the body: {}", e.body_text()),
            ));
        }
    };
    let req = BanRequest::parse(&body)?;
    let guard = app.control.guard();
    let length = req.length.unwrap_or(guard.config().ban_time);
    let now = Instant::now();
    let (net, ban) = guard
        .ban_admin(req.net, length, &req.reason, now)
        .map_err(|e| BadRequest(e.to_string()))?;
    tracing::info!(
        net = %net,
        secs = length.as_secs(),
        reason = %req.reason,
        by = %by.ip(),
        "admin ban"
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(BanView::new(net, &ban, now)),
    )
        .into_response())
}

async fn remove_ban_path(
    State(app): State<Arc<App>>,
    ConnectInfo(Peer(by)): ConnectInfo<Peer>,
    Path(net): Path<String>,
) -> Result<Response, BadRequest> {
    unban(&app, &net, by)
}

async fn remove_ban_query(
    State(app): State<Arc<App>>,
    ConnectInfo(Peer(by)): ConnectInfo<Peer>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let q = query(q)?;
    api::only_params(&q, &["net"])?;
    let net = q
        .get("net")
        .ok_or_else(|| BadRequest("say which ban: DELETE /bans/NET or /bans?net=NET".into()))?;
    unban(&app, net, by)
}

fn unban(app: &App, text: &str, by: SocketAddr) -> Result<Response, BadRequest> {
    let net = api::parse_net(text)?;
    if net.trunc() != net {
        return Err(BadRequest(format!(
            "{net} has host bits set: did you mean {}?",
            net.trunc()
        )));
    }
    if !app.control.guard().unban(net) {
        return Ok(error(StatusCode::NOT_FOUND, format!("no ban on {net}")));
    }
    tracing::info!(net = %net, by = %by.ip(), "admin unban");
    Ok(axum::Json(json!({ "net": net.to_string(), "removed": true })).into_response())
}

async fn reload(State(app): State<Arc<App>>, ConnectInfo(Peer(by)): ConnectInfo<Peer>) -> Response {
    let Some(loader) = &app.loader else {
        return error(
            StatusCode::CONFLICT,
            "moat was started without a config file (--config / MOAT_CONFIG): nothing to reload",
        );
    };
    let config = match loader() {
        Ok(c) => c,
        Err(e) => {
            app.control.reload_rejected(&e);
            tracing::warn!(error = %e, by = %by.ip(), "admin reload refused");
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    match app.control.reload(config) {
        Ok(report) => {
            tracing::info!(
                applied = ?report.applied,
                needs_restart = ?report.needs_restart,
                by = %by.ip(),
                "admin reload"
            );
            axum::Json(report).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, by = %by.ip(), "admin reload refused");
            let status = match e {
                ReloadError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ReloadError::Refused(_) => StatusCode::CONFLICT,
            };
            error(status, e.to_string())
        }
    }
}

async fn drain(State(app): State<Arc<App>>, ConnectInfo(Peer(by)): ConnectInfo<Peer>) -> Response {
    app.control.drain();
    tracing::info!(by = %by.ip(), "admin drain: accepting no new clients");
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "draining": true })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer   abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn digests_compare_by_content() {
        assert!(same_digest(&digest("a-token"), &digest("a-token")));
        assert!(!same_digest(&digest("a-token"), &digest("a-tokem")));
        assert!(!same_digest(&digest("a-token"), &digest("")));
    }
}
