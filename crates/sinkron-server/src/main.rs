//! The `sinkron` binary: parse the configuration, open storage (migrating it), serve until
//! SIGTERM or Ctrl-C.
//!
//! It owns process concerns only (flags, logging, signals, the compaction timer, exit codes)
//! and must not contain request handling: that is all in the library's `app`. Every startup
//! failure is one line on stderr and a non-zero exit, never a panic.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sinkron_server::jwt::JwtVerifier;
use sinkron_server::store::{self, Store};
use sinkron_server::{app, listen, now_ms, AppState, Config};
use tracing_subscriber::EnvFilter;

/// Sinkron: keeps a signed-in user's history, favourites, likes and settings in step across
/// tabs and devices.
#[derive(Parser)]
#[command(name = "sinkron", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sync API.
    Serve(Box<Config>),
    /// After restoring the database from a backup, with every server stopped: start its
    /// history anew, so each device replaces its copy at its next sync instead of keeping
    /// changes the restored database no longer has (see docs/DEPLOYMENT.md, "Backup").
    Restored(Restored),
    /// Merge a site's records from JSON Lines (`{"user","collection","key","value",
    /// "updatedAt"}`, a null value a delete), newest wins as for a push; while servers run
    /// (see docs/DEPLOYMENT.md, "Moving a site's existing data in").
    Import(sinkron_server::transfer::ImportArgs),
    /// Write the site's users' records as JSON Lines, the format `import` reads.
    Export(sinkron_server::transfer::ExportArgs),
}

#[derive(clap::Args)]
struct Restored {
    /// The restored database (as for `serve`).
    #[arg(long, env = "SINKRON_DATABASE_URL", value_name = "URL")]
    database: String,
}

/// How often tombstones are compacted after the pass at start.
const COMPACTION_PERIOD: Duration = Duration::from_secs(3600);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // One line: clap's first, with the arguments it lists (a missing `--database`),
            // without its usage block; and the help of the command given.
            let rendered = e.render().to_string();
            let mut lines = rendered.lines().filter(|l| !l.trim().is_empty());
            let mut line = lines
                .next()
                .unwrap_or("error: invalid arguments")
                .to_owned();
            let listed = lines
                .take_while(|l| l.starts_with(' '))
                .map(str::trim)
                .filter(|l| l.starts_with('-') || l.starts_with('<'));
            for (i, argument) in listed.enumerate() {
                line.push_str(if i == 0 { " " } else { ", " });
                line.push_str(argument);
            }
            let commands = <Cli as clap::CommandFactory>::command();
            let command = std::env::args()
                .skip(1)
                .find(|a| commands.get_subcommands().any(|c| c.get_name() == a))
                .unwrap_or_else(|| "serve".to_owned());
            eprintln!("{line} (see 'sinkron {command} --help')");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("SINKRON_LOG").ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work = async {
        match cli.command {
            Command::Serve(config) => serve(*config).await,
            Command::Restored(restored) => mark_restored(restored).await,
            Command::Import(args) => sinkron_server::transfer::import(args).await,
            Command::Export(args) => sinkron_server::transfer::export(args).await,
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    tracing::debug!(?config, "starting");
    // Settings first: a bad origin, key file or key URL fails before anything is opened.
    config.cors_origins()?;
    config.rules.check()?;
    if config.poll_interval > config.poll_interval_max {
        return Err(format!(
            "--poll-interval {} is above --poll-interval-max {}",
            config.poll_interval, config.poll_interval_max
        ));
    }
    let jwt = JwtVerifier::from_config(&config).await?;
    let admin_key = config
        .admin_token_file
        .as_deref()
        .map(sinkron_server::admin::AdminKey::read)
        .transpose()?;
    let store = store::connect(&config.database, config.connect_options())
        .await
        .map_err(|e| e.to_string())?;
    let state = AppState::new(store.clone(), config.clone())
        .with_jwt(jwt)
        .with_admin_key(admin_key);

    // At start, before accepting requests, so that no client is served from tombstones that
    // this run is about to forget.
    let sweep = Sweep {
        tombstone_ttl_secs: config.tombstone_ttl_secs,
        session_idle_secs: config.session_idle_secs,
    };
    sweep.run(store.as_ref()).await;
    let compactor = tokio::spawn(sweep_hourly(store.clone(), sweep));
    let failures = tokio::spawn(count_failed_sign_ins(state.clone()));

    // Before the address is printed: whoever reads it may stop the server at once.
    let stop = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, "listening");

    let limits = listen::Limits {
        max_connections: config
            .max_connections
            .map_or_else(listen::default_max_connections, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        // An answer gets as long as a request: a client that stops taking it has that long.
        write_timeout: Duration::from_secs(config.request_timeout_secs),
        grace: Duration::from_secs(config.shutdown_grace_secs),
    };
    tracing::debug!(?limits, "connection limits");
    let pokes = state.pokes.clone();
    let shutdown = async move {
        stop.await;
        // Open poke streams would hold their connections through the grace period.
        if let Some(pokes) = pokes {
            pokes.close();
        }
    };
    listen::serve(listener, app(state), limits, shutdown).await;
    compactor.abort();
    failures.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn mark_restored(restored: Restored) -> Result<(), String> {
    store::existing(&restored.database).map_err(|e| e.to_string())?;
    let options = store::ConnectOptions {
        pool_size: 1,
        serves: false,
    };
    let store = store::connect(&restored.database, options)
        .await
        .map_err(|e| e.to_string())?;
    let floor = store
        .mark_restored(now_ms().saturating_mul(1000))
        .await
        .map_err(|e| format!("cannot mark the database as restored: {e}"))?;
    println!(
        "marked as restored: versions start again at {floor}; each device replaces its copy at \
         its next sync (writes it has not sent yet are kept and sent)"
    );
    Ok(())
}

/// The log filter `SINKRON_LOG` asks for (`info` without it, or when it cannot be read). The
/// PostgreSQL driver's debug lines carry each statement's parameters (password hashes, token
/// hashes, record values): a filter that would let them through keeps the driver at `info`,
/// unless it names the driver.
fn log_filter(asked: Option<&str>) -> EnvFilter {
    let asked = asked.filter(|a| !a.trim().is_empty()).unwrap_or("info");
    let filter = EnvFilter::try_new(asked).unwrap_or_else(|_| EnvFilter::new("info"));
    let verbose = filter
        .max_level_hint()
        .is_none_or(|level| level > tracing_subscriber::filter::LevelFilter::INFO);
    if verbose && !asked.contains("tokio_postgres") {
        return filter.add_directive("tokio_postgres=info".parse().expect("a valid directive"));
    }
    filter
}

/// What the server deletes at start and then hourly: old tombstones, sessions unused too
/// long, ended sign-in attempt windows.
#[derive(Clone, Copy)]
struct Sweep {
    tombstone_ttl_secs: u64,
    session_idle_secs: u64,
}

impl Sweep {
    async fn run(self, store: &dyn Store) {
        let now = now_ms();
        let ago = |secs: u64| now.saturating_sub(secs.saturating_mul(1000));
        match store.compact_tombstones(ago(self.tombstone_ttl_secs)).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "compacted tombstones"),
            Err(e) => tracing::error!(error = %e, "tombstone compaction failed"),
        }
        let windows_before = now.saturating_sub(sinkron_server::auth::LOGIN_WINDOW_MS);
        let deleted_before = now.saturating_sub(sinkron_server::authn::DELETED_ACCOUNT_ANSWERED_MS);
        match store
            .purge_expired(ago(self.session_idle_secs), windows_before, deleted_before)
            .await
        {
            Ok(0) => {}
            Ok(ended) => tracing::info!(ended, "ended sessions unused too long"),
            Err(e) => tracing::error!(error = %e, "ending unused sessions failed"),
        }
    }
}

/// Once a minute, how many wrong passwords were given, when any were: a guessing attack shows
/// in the log even where each request's line is not kept.
async fn count_failed_sign_ins(state: AppState) {
    let period = Duration::from_secs(60);
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        timer.tick().await;
        let failed = state.take_failed_sign_ins();
        if failed > 0 {
            tracing::warn!(failed, "wrong passwords given in the last minute");
        }
    }
}

async fn sweep_hourly(store: Arc<dyn Store>, sweep: Sweep) {
    let start = tokio::time::Instant::now() + COMPACTION_PERIOD;
    let mut timer = tokio::time::interval_at(start, COMPACTION_PERIOD);
    loop {
        timer.tick().await;
        sweep.run(store.as_ref()).await;
    }
}

/// Resolves at SIGTERM or Ctrl-C. The handlers are installed when this is called, not when it
/// is first awaited: a signal that comes before the accept loop first waits (one sent the
/// moment the server says it listens) still stops it cleanly, instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (term, interrupt) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_database_drivers_debug_lines_are_kept_out_unless_named() {
        let directives = |asked: Option<&str>| log_filter(asked).to_string();
        assert!(directives(Some("debug")).contains("tokio_postgres=info"));
        assert!(directives(Some("info,sinkron_server=trace")).contains("tokio_postgres=info"));
        // A quieter filter is not made louder for the driver.
        for asked in [None, Some("info"), Some("warn"), Some("error")] {
            assert!(!directives(asked).contains("tokio_postgres"), "{asked:?}");
        }
        // Named, the driver logs as asked.
        let named = directives(Some("debug,tokio_postgres=debug"));
        assert!(!named.contains("tokio_postgres=info"), "{named}");
    }
}
