//! Assembles a node and serves it: routes, listener, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use rand::Rng;
use thiserror::Error;
use tidings_protocol::{Disconnect, DisconnectCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{TokenKeys, TokenVerifier};
use crate::config::Config;
use crate::engine::{BuildError, Engine};
use crate::listener::{self, Admission, Timeouts};
use crate::metrics::Metrics;
use crate::node::{Node, NodeSink};
use crate::{api, client_api, demo, transport};

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is unsafe to run.
    #[error("{0}")]
    Unsafe(String),
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] BuildError),
    /// The engine could not start (Redis unreachable).
    #[error("the engine could not start: {0}")]
    EngineStart(crate::engine::EngineError),
    /// The webhook queue could not be opened.
    #[error("cannot open the webhook queue: {0}")]
    Webhooks(#[from] crate::hooks::queue::QueueError),
    /// The JWKS URL's client could not be built (its CA file).
    #[error(transparent)]
    Jwks(#[from] crate::auth::jwks::JwksError),
}

/// How often idle channels are trimmed and forgotten (at most).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often a node announces itself to the cluster (`info`).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);

/// Credentials generated in dev mode (no secret configured).
#[derive(Debug, Clone)]
pub struct DevCredentials {
    /// The generated HS256 token secret.
    pub token_secret: String,
    /// The generated API key.
    pub api_key: String,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    admission: Arc<Admission>,
    node: Arc<Node>,
    engine: Arc<dyn Engine>,
    sweeper: JoinHandle<()>,
    announcer: JoinHandle<()>,
    /// Tasks of optional features: JWKS refreshers, the webhook sender.
    background: Vec<JoinHandle<()>>,
    dev: Option<DevCredentials>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds and starts serving `config`.
    pub async fn start(mut config: Config) -> Result<Server, ServerError> {
        config.add_pusher_namespaces();
        if config.demo_enabled() {
            config.add_demo_namespaces();
            if !config.dev_mode() {
                tracing::warn!(
                    "demo pages are served, but they join through /v1/dev/token, which exists in dev mode only: give them tokens from your backend"
                );
            }
        }
        let dev = config.dev_mode().then(|| DevCredentials {
            token_secret: config
                .dev
                .token_secret
                .clone()
                .unwrap_or_else(crate::auth::random_secret),
            api_key: config
                .dev
                .api_key
                .clone()
                .unwrap_or_else(crate::auth::random_secret),
        });
        if dev.is_some() && !config.listen.ip().is_loopback() {
            return Err(ServerError::Unsafe(format!(
                "refusing to listen on {} without `auth.token_secret`: dev mode (anonymous access, generated keys) is for loopback only; set TIDINGS_TOKEN_SECRET and TIDINGS_API_KEYS or listen on 127.0.0.1",
                config.listen
            )));
        }
        let jwks = match &config.auth.token_jwks_url {
            Some(url) => {
                let remote = Arc::new(crate::auth::jwks::RemoteJwks::new(
                    url,
                    config.auth.token_jwks_ca.as_deref(),
                    config.auth.token_jwks_min_interval,
                    config.auth.token_jwks_refresh,
                )?);
                // The first keys before the first client: a provider that is
                // down now is tried again later, it does not stop the server.
                if let Err(e) = remote.fetch().await {
                    tracing::warn!(%url, error = %e, "fetching the JWKS failed; trying again later");
                }
                Some(remote)
            }
            None => None,
        };
        let secrets_now =
            secrets(&config, dev.as_ref(), jwks.as_ref()).map_err(ServerError::Unsafe)?;

        let listener = listen(config.listen).map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;

        let metrics = Arc::new(Metrics::new());
        let engine: Arc<dyn Engine> = Arc::new(crate::engine::timed::Timed::new(
            crate::engine::build(&config)?,
            &metrics,
        ));
        let webhooks = crate::hooks::Senders::open(&config, &metrics)?;
        let node = Arc::new(Node::new(
            config,
            addr,
            engine.clone(),
            metrics,
            secrets_now,
            webhooks,
            jwks.clone(),
        ));
        engine
            .start(Arc::new(NodeSink::new(&node)))
            .await
            .map_err(ServerError::EngineStart)?;

        // Browser-facing routes: CORS for the configured origins only.
        let browser = Router::new()
            .route("/v1/sse", get(transport::sse::handle))
            .route("/v1/poll", get(transport::poll::handle))
            .merge(client_api::router(&node))
            .layer(cors(&node.config.cors_origins));
        let mut app = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics_text))
            .route("/v1/ws", any(transport::ws::upgrade))
            .route("/v1/openapi.json", get(api::openapi::handle))
            .merge(api::router(&node))
            .merge(browser);
        if !node.config.pusher.apps.is_empty() {
            // Pusher's HTTP API, signed per app (its own body limit applies).
            app = app
                .route("/apps/{*rest}", any(crate::pusher::api::handle))
                .route("/users/{*rest}", any(crate::pusher::api::handle))
                .route("/app/{key}", any(transport::pusher::upgrade));
        }
        app = if node.config.demo_enabled() {
            app.merge(demo::router())
        } else {
            app.route("/", get(index))
        };
        if let Some(admin) = crate::admin::router(&node) {
            app = app.merge(admin);
        }
        if let Some(dev) = &dev {
            app = app.merge(demo::dev_router(dev.token_secret.clone()));
        }
        let app = app.with_state(node.clone());

        // Trim idle channels by their namespace's policy and forget the empty ones.
        let sweeper = {
            let node = node.clone();
            let engine = engine.clone();
            tokio::spawn(async move {
                // Often enough that an unrenewed presence lease ends within
                // 1.5 × presence_ttl.
                let every = SWEEP_EVERY.min(node.config.presence_ttl / 2);
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let policy_of =
                        |channel: &str| node.resolve(channel).ok().map(|(_, ns)| node.policy(&ns));
                    let evicted = engine
                        .maintain(&policy_of, node.config.idempotency_window)
                        .await;
                    if evicted > 0 {
                        tracing::debug!(evicted, "forgot idle channels");
                    }
                }
            })
        };
        // The cluster learns of this node (and forgets it when it stops
        // announcing); known before its first subscriber, so that no other
        // node takes it for dead when telling who occupies a channel.
        if let Err(e) = node.engine.announce(&node.info()).await {
            tracing::debug!(error = %e, "announcing this node failed");
        }
        let announcer = {
            let node = node.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
                loop {
                    tick.tick().await;
                    if let Err(e) = node.engine.announce(&node.info()).await {
                        tracing::debug!(error = %e, "announcing this node failed");
                    }
                }
            })
        };
        let mut background = Vec::new();
        // A JWKS file is re-read on its refresh interval (key rotation at the
        // identity provider); a file that fails to load keeps the old keys.
        if node.config.auth.token_jwks.is_some() {
            let node = node.clone();
            let dev = dev.clone();
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(node.config.auth.token_jwks_refresh);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match secrets(&node.config, dev.as_ref(), node.jwks.as_ref()) {
                        Ok((tokens, _)) => *node.tokens.write() = tokens,
                        Err(e) => tracing::warn!(error = %e, "reloading the JWKS failed; keeping the old keys"),
                    }
                }
            }));
        }
        if let Some(jwks) = jwks {
            background.push(tokio::spawn(jwks.run()));
        }
        for webhooks in node.webhooks.all() {
            background.push(tokio::spawn(webhooks.clone().run()));
        }
        background.extend(crate::ingest::start(&node));
        background.push(tokio::spawn(crate::chat::receipts::run(node.clone())));
        if node.config.demo_enabled() {
            background.push(tokio::spawn(demo::snapshots::run(node.clone())));
        }
        let (stop, stopped) = watch::channel(false);
        let send_buffer = node.config.client.send_buffer;
        let admission = Admission::new(&node.config.client, node.metrics.clone());
        let timeouts = Timeouts {
            header: node.config.client.header_timeout,
            keepalive: node.config.client.keepalive_timeout,
        };
        let task = tokio::spawn(listener::serve(
            listener,
            app,
            admission.clone(),
            timeouts,
            move |tcp: &tokio::net::TcpStream| tune(tcp, send_buffer),
            stopped,
        ));
        tracing::info!(%addr, max_connections = admission.max_open(), "tidings listening");
        Ok(Server {
            admission,
            engine,
            sweeper,
            announcer,
            background,
            addr,
            node,
            dev,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared node state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The generated credentials, in dev mode.
    pub fn dev_credentials(&self) -> Option<&DevCredentials> {
        self.dev.as_ref()
    }

    /// Applies a re-read configuration (SIGHUP): token keys, API keys and
    /// namespace options. Revoked keys stop working at once; open
    /// connections and their subscriptions stay. Other settings (listen
    /// address, limits, storage) need a restart.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let (tokens, api_keys) = secrets(config, self.dev.as_ref(), self.node.jwks.as_ref())?;
        *self.node.tokens.write() = tokens;
        *self.node.api_keys.write() = api_keys;
        let mut config = config.clone();
        config.add_pusher_namespaces();
        if self.node.config.demo_enabled() {
            config.add_demo_namespaces();
        }
        self.node.set_namespaces(&config);
        Ok(())
    }

    /// Graceful shutdown: stop accepting, tell every client to come back after
    /// a random delay within `shutdown_spread` (3001), and wait for them to
    /// close, at most `shutdown_timeout`.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.sweeper.abort();
        self.announcer.abort();
        for task in &self.background {
            task.abort();
        }
        let spread = self.node.config.shutdown_spread.as_millis() as u64;
        self.node.disconnect_all(|| {
            Disconnect::new(
                DisconnectCode::SHUTDOWN,
                Some(rand::rng().random_range(0..=spread)),
            )
        });
        let deadline = tokio::time::Instant::now() + self.node.config.shutdown_timeout;
        while self.admission.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout_at(deadline, self.task).await;
        // Events of the last connections wait on disk for the next start.
        for webhooks in self.node.webhooks.all() {
            webhooks.flush().await;
        }
        // Everything acknowledged is committed; fold the log and stop writing.
        self.engine.close().await;
    }
}

/// Socket options of every accepted connection.
fn tune(tcp: &tokio::net::TcpStream, send_buffer: usize) {
    // Pushes and replies are small and latency-bound: no Nagle delay.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY failed");
    }
    // A peer that vanished (NAT drop, mobile handover) must be noticed in
    // tens of seconds, not the kernel's ~15 minutes: SSE streams never
    // write back, and their presence leases renew while open.
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive failed");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(60))) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT failed");
    }
    if send_buffer > 0
        && let Err(e) = sock.set_send_buffer_size(send_buffer)
    {
        tracing::debug!(error = %e, "SO_SNDBUF failed");
    }
}

/// Pending connections the kernel may queue before the accept loop takes
/// them (capped by `net.core.somaxconn`). tokio's default, 1024, overflows in
/// a reconnect storm, and each dropped SYN costs its client a 1 s, then 3 s
/// retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The token verifier and API keys of `config` (and dev mode's generated ones).
fn secrets(
    config: &Config,
    dev: Option<&DevCredentials>,
    remote: Option<&Arc<crate::auth::jwks::RemoteJwks>>,
) -> Result<(TokenVerifier, crate::auth::ApiKeys), String> {
    let mut api_keys: Vec<_> = dev
        .iter()
        .map(|d| {
            (
                "dev".to_string(),
                d.api_key.clone(),
                crate::auth::ApiScope::All,
            )
        })
        .collect();
    api_keys.extend(config.auth.api_keys.iter().map(|k| k.parts()));
    let tokens = TokenVerifier::from_keys(&TokenKeys {
        secret: dev
            .map(|d| d.token_secret.as_str())
            .or(config.auth.token_secret.as_deref()),
        public_keys: &config.auth.token_public_keys,
        audience: config.auth.token_audience.as_deref(),
        issuer: config.auth.token_issuer.as_deref(),
        jwks: config.auth.token_jwks.as_deref(),
        remote: remote.cloned(),
    })?;
    Ok((tokens, crate::auth::ApiKeys::new(api_keys)))
}

/// CORS for `origins` ("*" = any); credentials are never allowed.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(Duration::from_secs(600))
}

async fn index() -> impl IntoResponse {
    "Tidings real-time server. WebSocket: /v1/ws · API: POST /v1/api/<method> · /health · /metrics\n"
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics_text(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // The hub keeps the channel and subscription gauges as it changes.
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(),
    )
}
