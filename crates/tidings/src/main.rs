//! The `tidings` binary: a thin front over the server and client crates.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod pubsub;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidings_server::config::{Config, Overrides};
use tidings_server::{Server, auth};

/// Tidings: a real-time updates server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Log lines as text or as JSON objects (one per line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "TIDINGS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// Address to listen on (overrides TIDINGS_LISTEN and the file).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Configuration file (TOML).
    #[arg(long, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for durable data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Delete the stored history first: every channel starts over with a new
    /// epoch, and clients are told to reload.
    #[arg(long)]
    reset_history: bool,
}

impl ServeArgs {
    /// Flags given after `serve` win over those given before it.
    fn or(self, outer: ServeArgs) -> ServeArgs {
        ServeArgs {
            listen: self.listen.or(outer.listen),
            config: self.config.or(outer.config),
            data_dir: self.data_dir.or(outer.data_dir),
            reset_history: self.reset_history || outer.reset_history,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Print a connection token (HS256 JWT).
    Token {
        /// The HS256 secret.
        #[arg(long, env = "TIDINGS_TOKEN_SECRET")]
        secret: String,
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 1h, 30m; "never" for no expiry.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Connection info (JSON) attached to the user's publications.
        #[arg(long)]
        info: Option<String>,
        /// Channels to subscribe server-side at connect (repeatable).
        #[arg(long = "subscribe")]
        channels: Vec<String>,
        /// Mint a channel token for this private channel instead.
        #[arg(long)]
        channel: Option<String>,
        /// The `aud` claim.
        #[arg(long)]
        aud: Option<String>,
        /// The `iss` claim.
        #[arg(long)]
        iss: Option<String>,
    },
    /// Validate a configuration file; names each bad key.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Publish DATA (JSON, or a plain string) into CHANNEL over WebSocket.
    Pub {
        /// Channel name.
        channel: String,
        /// The data.
        data: String,
        /// Server WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8000/v1/ws")]
        url: String,
        /// Connection token.
        #[arg(long, env = "TIDINGS_CLIENT_TOKEN")]
        token: Option<String>,
        /// Idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Load-test a server (loopback only): run a scenario file from bench/,
    /// or `ceiling` for what the machine can do with no server at all.
    Bench(BenchArgs),
    /// Subscribe to channels and print each publication as a JSON line.
    Sub {
        /// Channel names.
        #[arg(required = true)]
        channels: Vec<String>,
        /// Server WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8000/v1/ws")]
        url: String,
        /// Connection token.
        #[arg(long, env = "TIDINGS_CLIENT_TOKEN")]
        token: Option<String>,
        /// Resume after OFFSET:EPOCH.
        #[arg(long)]
        since: Option<String>,
    },
    /// Webhook helpers for backend developers.
    Webhook {
        #[command(subcommand)]
        action: WebhookCmd,
    },
}

#[derive(Subcommand)]
enum WebhookCmd {
    /// Check a webhook request's `X-Tidings-Signature` against its body
    /// (read from --body-file, or stdin); exits 1 when it does not verify.
    Verify {
        /// The webhook secret (`webhooks.secret`).
        #[arg(long, env = "TIDINGS_WEBHOOK_SECRET")]
        secret: String,
        /// The header's value, `t=...,v1=...`.
        #[arg(long)]
        signature: String,
        /// The exact request body ("-" for stdin).
        #[arg(long, default_value = "-")]
        body_file: PathBuf,
        /// How far the timestamp may be from now.
        #[arg(long, default_value = "5m")]
        tolerance: String,
    },
    /// Print the `X-Tidings-Signature` of a body (from --body-file, or
    /// stdin), to test a receiver.
    Sign {
        /// The webhook secret.
        #[arg(long, env = "TIDINGS_WEBHOOK_SECRET")]
        secret: String,
        /// The body ("-" for stdin).
        #[arg(long, default_value = "-")]
        body_file: PathBuf,
        /// The timestamp (Unix seconds; default now).
        #[arg(long)]
        time: Option<u64>,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// A scenario file (TOML, see bench/), or `ceiling`.
    scenario: PathBuf,
    /// The server's pid, for its RSS and CPU (default: found by its port).
    #[arg(long)]
    pid: Option<u32>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
    /// Override the scenario's server address; several (comma-separated):
    /// nodes of one cluster, connections and publishes spread over them.
    #[arg(long, value_delimiter = ',')]
    addr: Vec<SocketAddr>,
    /// Override the scenario's connection count.
    #[arg(long)]
    connections: Option<usize>,
    /// Override the scenario's publish rates (comma-separated).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// Override the p99 (ms) above which publish steps stop.
    #[arg(long)]
    stop_p99_ms: Option<f64>,
    /// Override the scenario's target (tidings, pusher, socketio).
    #[arg(long)]
    target: Option<String>,
    /// Ceiling: frames per write.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Ceiling: rounds over every socket.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with its causes, never a backtrace: these are
            // a user's mistakes (a bad config, a port in use), not our bugs.
            eprintln!("Error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once (some errors repeat their cause in
/// their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        None => runtime.block_on(serve(cli.serve)),
        Some(Cmd::Serve(args)) => runtime.block_on(serve(args.or(cli.serve))),
        Some(Cmd::Token {
            secret,
            user,
            ttl,
            info,
            channels,
            channel,
            aud,
            iss,
        }) => {
            let ttl = match ttl.as_str() {
                "never" => None,
                s => Some(humantime_parse(s)?),
            };
            let mut claims = serde_json::json!({ "sub": user });
            if let Some(ttl) = ttl {
                claims["exp"] = (auth::unix_now() + ttl.as_secs()).into();
            }
            if let Some(info) = info {
                let info: serde_json::Value =
                    serde_json::from_str(&info).context("--info must be JSON")?;
                claims["info"] = info;
            }
            match channel {
                Some(channel) => claims["channel"] = channel.into(),
                None if !channels.is_empty() => claims["channels"] = channels.into(),
                None => {}
            }
            if let Some(aud) = aud {
                claims["aud"] = aud.into();
            }
            if let Some(iss) = iss {
                claims["iss"] = iss.into();
            }
            println!(
                "{}",
                auth::mint_claims(&secret, &claims).context("minting the token")?
            );
            Ok(())
        }
        Some(Cmd::CheckConfig { file }) => {
            Config::load(Some(&file), &Overrides::default())
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Some(Cmd::Pub {
            channel,
            data,
            url,
            token,
            idempotency_key,
        }) => runtime.block_on(pubsub::run_pub(url, token, channel, data, idempotency_key)),
        Some(Cmd::Bench(args)) => bench::run(&runtime, args),
        Some(Cmd::Sub {
            channels,
            url,
            token,
            since,
        }) => runtime.block_on(pubsub::run_sub(url, token, channels, since)),
        Some(Cmd::Webhook { action }) => webhook(action),
    }
}

/// `tidings webhook verify | sign`.
fn webhook(action: WebhookCmd) -> anyhow::Result<()> {
    use tidings_server::hooks::signature;
    let read = |path: &std::path::Path| -> anyhow::Result<Vec<u8>> {
        if path.as_os_str() == "-" {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
                .context("reading the body from stdin")?;
            Ok(body)
        } else {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
    };
    match action {
        WebhookCmd::Verify {
            secret,
            signature: header,
            body_file,
            tolerance,
        } => {
            let body = read(&body_file)?;
            let tolerance = humantime_parse(&tolerance)?;
            match signature::verify(
                &secret,
                &header,
                &body,
                auth::unix_now(),
                tolerance.as_secs(),
            ) {
                Ok(()) => {
                    println!("valid");
                    Ok(())
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    std::process::exit(1);
                }
            }
        }
        WebhookCmd::Sign {
            secret,
            body_file,
            time,
        } => {
            let body = read(&body_file)?;
            let t = time.unwrap_or_else(auth::unix_now);
            println!("{}", signature::sign(&secret, t, &body));
            Ok(())
        }
    }
}

fn humantime_parse(s: &str) -> anyhow::Result<Duration> {
    tidings_server::config::parse_duration(s).with_context(|| format!("bad duration `{s}`"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
    };
    let config =
        Config::load(args.config.as_deref(), &overrides).context("loading the configuration")?;
    if args.reset_history {
        tidings_server::engine::store::reset(&config.data_dir)
            .with_context(|| format!("deleting the history in {}", config.data_dir.display()))?;
        tracing::warn!(dir = %config.data_dir.display(), "history deleted (--reset-history): channels start over with new epochs");
    }
    // Each connection is a file descriptor: use all the hard limit allows
    // (the soft one is often 1024). What is left is reported at start.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "raising the open-file limit failed");
    }
    let server = Server::start(config).await.context("starting the server")?;
    if let Some(dev) = server.dev_credentials() {
        tracing::warn!(
            "dev mode: no auth.token_secret configured; anonymous clients allowed, loopback only"
        );
        eprintln!(
            "\n  dev token secret: {}\n  dev API key:      {}\n  mint a token:     tidings token --secret {} --user alice\n",
            dev.token_secret, dev.api_key, dev.token_secret
        );
    }
    eprintln!("  Tidings is listening on http://{}", server.local_addr());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    loop {
        #[cfg(unix)]
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => reload(&server, &args.config, &overrides),
        }
        #[cfg(not(unix))]
        {
            (&mut shutdown).await;
            break;
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// SIGHUP: re-reads the configuration and swaps token keys, API keys and
/// namespace options (rotation without a restart). A bad file changes nothing.
fn reload(server: &Server, file: &Option<PathBuf>, overrides: &Overrides) {
    match Config::load(file.as_deref(), overrides)
        .map_err(|e| e.to_string())
        .and_then(|config| server.reload(&config))
    {
        Ok(()) => tracing::info!("reloaded token keys, API keys and namespaces (SIGHUP)"),
        Err(e) => tracing::error!(error = %e, "SIGHUP reload failed; keeping the old keys"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
