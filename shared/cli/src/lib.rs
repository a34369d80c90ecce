//! The `chronicle` command line for any domain: run the API, the projectors and the reactions
//! locally, inspect history, the audit feed and state, verify, archive, rebuild read models, and
//! benchmark the embedded store. A binary is one line: [`main`] with the domain it serves.
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     chronicle_cli::main(my_domain::domain())
//! }
//! ```

// jemalloc instead of glibc's malloc, for every binary built on this crate: every command allocates and frees on one thread what
// another thread (the store's writer) frees or allocated, and glibc spent about a quarter of
// the async threads' time in malloc/free (`malloc_consolidate`) during appends. The bench used
// 10-20% less CPU per event with jemalloc over alternated runs (README, Speed).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "bench")]
mod bench;
#[cfg(feature = "bench")]
mod bench_aws;
#[cfg(feature = "bench")]
mod bench_reactions;
mod inspect;
pub mod mappings;
mod serve;

use anyhow::Context;
use chronicle_embedded::EmbeddedStore;
use chronicle_kernel::archived::ArchivedEventStore;
use chronicle_kernel::{Chronicle, Domain, HandlerConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "chronicle",
    version,
    about = "Event sourcing on one machine or on AWS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Directory holding the embedded store (created if missing).
    #[arg(long, env = "CHRONICLE_DATA_DIR", default_value = "./chronicle-data")]
    data_dir: PathBuf,
    /// Snapshot every N events of an aggregate (0: never).
    #[arg(long, env = "CHRONICLE_SNAPSHOT_EVERY", default_value_t = 100)]
    snapshot_every: u64,
    /// Where events live: the embedded store in --data-dir, or the AWS resources named by
    /// the CHRONICLE_* variables on the endpoint the AWS_* variables give.
    #[arg(long, env = "CHRONICLE_BACKEND", value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and run the projectors.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on.
        #[arg(long, env = "CHRONICLE_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Embedded: also publish every event (upcast) as a JSON line to this file, the local
        /// stand-in for the Kinesis stream (`tail -f` it).
        #[arg(long, env = "CHRONICLE_PUBLISH_LOG")]
        publish_log: Option<PathBuf>,
        /// How long a command's Idempotency-Key record answers its retries (e.g. 7d, 12h,
        /// 90s); after it the key is free and a retry runs as a new command.
        #[arg(long, env = "CHRONICLE_IDEMPOTENCY_RETENTION", default_value = "7d",
              value_parser = chronicle_aws::parse_retention)]
        idempotency_retention: std::time::Duration,
    },
    /// Create the DynamoDB tables (with streams), S3 buckets and Kinesis stream named by the
    /// CHRONICLE_* variables, if missing, on the configured endpoint (moto, LocalStack, AWS).
    AwsSetup,
    /// Print an aggregate's events.
    History {
        #[command(flatten)]
        store: StoreArgs,
        aggregate_type: String,
        id: String,
        #[arg(long, default_value_t = 1)]
        from_version: u64,
        #[arg(long)]
        to_version: Option<u64>,
        /// Only events recorded at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events recorded at or before this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events of this type.
        #[arg(long)]
        event_type: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// Events as stored, before upcasting.
        #[arg(long)]
        raw: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print every event recorded in a time range, across aggregates, in recorded order.
    Audit {
        #[command(flatten)]
        store: StoreArgs,
        /// Events recorded at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        from: chrono::DateTime<chrono::Utc>,
        /// Events recorded at or before this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        to: chrono::DateTime<chrono::Utc>,
        /// At most this many events (all of the range by default).
        #[arg(long)]
        limit: Option<usize>,
        /// Events as stored, before upcasting.
        #[arg(long)]
        raw: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an aggregate's state folded from its events.
    State {
        #[command(flatten)]
        store: StoreArgs,
        aggregate_type: String,
        id: String,
        /// State as of this version.
        #[arg(long, conflicts_with = "at")]
        version: Option<u64>,
        /// State as of this RFC 3339 time (the newest version recorded at or before it).
        #[arg(long, value_parser = parse_time)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the hash chains of one stream or of the whole store; exits non-zero naming
    /// the first changed, removed or reordered event of every broken stream.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(required_unless_present = "all", requires = "id")]
        aggregate_type: Option<String>,
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every stream in the store.
        #[arg(long, conflicts_with_all = ["aggregate_type", "id"])]
        all: bool,
        /// A JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Anchor every stream's head: a Merkle root over (type, id, version, hash) of each, linked
    /// to the anchor before, appended to `anchors/log.jsonl` in the data directory (fsynced) or,
    /// on AWS, written to the archive bucket under Object Lock and to Kinesis. `verify --all`
    /// then holds the store to it.
    Anchor {
        #[command(flatten)]
        store: StoreArgs,
        /// Also append the new anchor (one JSON line) to this file: keep it where the store's
        /// writers can't reach (another disk, a mounted share).
        #[arg(long)]
        copy_to: Option<PathBuf>,
        /// Also run this command (through `sh -c`) with the new anchor as JSON on its stdin:
        /// mail it, post it, commit it to a repository of anchors.
        #[arg(long)]
        exec: Option<String>,
        /// A JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print one stream's inclusion proof under the latest anchor (JSON), or check a proof
    /// without any store.
    Proof {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(required_unless_present = "check", requires = "id")]
        aggregate_type: Option<String>,
        #[arg(required_unless_present = "check")]
        id: Option<String>,
        /// Check the proof in this file (what `proof TYPE ID` printed); exit 1 if it fails.
        #[arg(long, conflicts_with_all = ["aggregate_type", "id"])]
        check: Option<PathBuf>,
    },
    /// Forget a data subject (crypto-shredding): destroy its key, so its personal fields read
    /// as erased everywhere they were copied, and record the erasure (`_subjects/SUBJECT`).
    /// Nothing else changes: every chain still verifies. Beside a running server it is done
    /// through the server (`POST /admin/subjects/{subject}/forget`).
    Forget {
        #[command(flatten)]
        store: StoreArgs,
        /// The data subject's id (what the domain's personal fields name as their subject).
        subject: String,
        /// A JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy older events into compressed, immutable archive segments (`archive/` in the data
    /// directory, or the archive bucket on AWS); reads, verify and replay use both.
    Archive {
        #[command(flatten)]
        store: StoreArgs,
        /// Archive events recorded longer ago than this (e.g. 30d, 12h, 0s).
        #[arg(long, value_parser = humantime::parse_duration,
              required_unless_present = "below_snapshot")]
        older_than: Option<std::time::Duration>,
        /// Archive only events at or below each stream's latest snapshot (with --older-than:
        /// events that are both).
        #[arg(long)]
        below_snapshot: bool,
        /// Close a segment once it holds this many events.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        segment_events: u64,
        /// AWS: mark the archived hot copies to expire this long after archiving (DynamoDB
        /// TTL). The embedded store keeps every event.
        #[arg(long, value_parser = humantime::parse_duration)]
        expire_after: Option<std::time::Duration>,
        /// A JSON report instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay every event into a fresh generation of a read model, then switch reads to it.
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
        /// Projection name: `{aggregate type}_state` or one the domain registers
        /// (`GET /admin/projections` lists them).
        projection: String,
    },
    /// Measure append throughput and latency, replay time and peak memory (on the accounts
    /// sample), or the reaction path (`--reactions`, on the orders sample).
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Embedded,
    Aws,
}

/// Whether a command writes to the embedded store (and so takes its directory's lock) or
/// only reads it, which works beside a running `serve`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Write,
    Read,
}

/// The registry on whichever backend `args` names, read-only on the embedded store; the
/// embedded store comes along (to close it) when that is the backend.
pub(crate) async fn open_reader(
    domain: &Domain,
    args: &StoreArgs,
) -> anyhow::Result<(Option<Arc<EmbeddedStore>>, Chronicle)> {
    match args.backend {
        Backend::Embedded => open(domain, args, Access::Read).map(|(s, c)| (Some(s), c)),
        Backend::Aws => {
            let app = chronicle_lambda::App::from_env(domain.clone()).await?;
            Ok((None, app.chronicle))
        }
    }
}

/// Opens the embedded store and registers `domain` on it.
pub(crate) fn open(
    domain: &Domain,
    args: &StoreArgs,
    access: Access,
) -> anyhow::Result<(Arc<EmbeddedStore>, Chronicle)> {
    open_with(domain, args, access, HandlerConfig::default())
}

/// [`open`] with command settings beyond the store's (`snapshot_every` comes from `args`).
pub(crate) fn open_with(
    domain: &Domain,
    args: &StoreArgs,
    access: Access,
    config: HandlerConfig,
) -> anyhow::Result<(Arc<EmbeddedStore>, Chronicle)> {
    let store = match access {
        Access::Write => EmbeddedStore::open(&args.data_dir),
        Access::Read => EmbeddedStore::open_read_only(&args.data_dir),
    }
    .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let config = HandlerConfig {
        snapshot_every: args.snapshot_every,
        ..config
    };
    let archive = match access {
        Access::Write => chronicle_embedded::DirArchive::open(archive_dir(args))
            .context("opening the archive directory")?,
        Access::Read => chronicle_embedded::DirArchive::read_only(archive_dir(args)),
    };
    let events = Arc::new(ArchivedEventStore::new(store.clone(), Arc::new(archive)));
    // Data subjects' keys, in a file of their own so forgetting one changes no event.
    let keys_path = args.data_dir.join(chronicle_embedded::KEYS_FILE);
    let keys = match access {
        Access::Write => chronicle_embedded::SqliteKeyStore::open(&keys_path),
        Access::Read => chronicle_embedded::SqliteKeyStore::open_read_only(&keys_path),
    }
    .with_context(|| format!("opening the key store {}", keys_path.display()))?;
    let chronicle = Chronicle::builder(
        events.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        config,
    )
    .domain(domain.clone())
    // The one-pass check of every chain, the archive's segments held to the store, and the
    // store held to its anchors.
    .bulk_verify(events.clone())
    .copies(events.clone())
    .anchors(
        store.clone(),
        events,
        Arc::new(chronicle_embedded::DirAnchorLog::new(anchor_dir(args))),
    )
    .keys(Arc::new(keys))
    .build();
    Ok((store, chronicle))
}

/// The embedded anchor log's directory: `anchors/` in the data directory.
pub(crate) fn anchor_dir(args: &StoreArgs) -> PathBuf {
    args.data_dir.join("anchors")
}

/// The embedded archive's directory: `archive/` in the data directory.
pub(crate) fn archive_dir(args: &StoreArgs) -> PathBuf {
    args.data_dir.join("archive")
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chronicle_kernel::envelope::parse_timestamp(s)
        .map_err(|e| format!("not an RFC 3339 time (e.g. 2026-11-26T12:00:00Z): {e}"))
}

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // RUST_LOG as the functions read it (`info`, `chronicle_kernel=debug,warn`).
    let filter = chronicle_lambda::log_filter_from_env();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
}

/// Runs the command line (arguments from the process) for `domain`; the exit code says whether
/// the command succeeded.
///
/// # Panics
/// On a registration mistake in `domain` (see [`Domain::check`]).
pub fn main(domain: Domain) -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli, &domain) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; a backtrace helps nobody reading a CLI error.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, domain: &Domain) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve {
                store,
                addr,
                publish_log,
                idempotency_retention,
            } => match store.backend {
                Backend::Embedded => {
                    let config = HandlerConfig {
                        idempotency_retention,
                        ..HandlerConfig::default()
                    };
                    serve::serve(domain, &store, config, &addr, publish_log.as_deref()).await
                }
                Backend::Aws if publish_log.is_some() => Err(anyhow::anyhow!(
                    "--publish-log is for the embedded backend; on AWS events go to Kinesis"
                )),
                Backend::Aws => serve::serve_aws(domain, &addr, idempotency_retention).await,
            },
            Command::AwsSetup => serve::aws_setup().await,
            Command::History {
                store,
                aggregate_type,
                id,
                from_version,
                to_version,
                from,
                to,
                event_type,
                limit,
                raw,
                json,
            } => {
                let query = chronicle_kernel::audit::HistoryQuery {
                    from_version,
                    to_version,
                    from,
                    to,
                    event_type,
                    limit: 1000,
                    raw,
                };
                inspect::history(domain, &store, &aggregate_type, &id, query, limit, json).await
            }
            Command::Audit {
                store,
                from,
                to,
                limit,
                raw,
                json,
            } => inspect::audit(domain, &store, from, to, limit, raw, json).await,
            Command::State {
                store,
                aggregate_type,
                id,
                version,
                at,
                json,
            } => inspect::state(domain, &store, &aggregate_type, &id, version, at, json).await,
            Command::Verify {
                store,
                aggregate_type,
                id,
                all: _,
                json,
            } => {
                let one = aggregate_type.zip(id);
                inspect::verify(domain, &store, one, json).await
            }
            Command::Archive {
                store,
                older_than,
                below_snapshot,
                segment_events,
                expire_after,
                json,
            } => {
                use chronicle_kernel::archived::{ArchivePolicy, ArchiverOptions};
                let policy = ArchivePolicy {
                    older_than: older_than
                        .map(chrono::Duration::from_std)
                        .transpose()
                        .context("--older-than is too long")?,
                    below_snapshot,
                };
                let opts = ArchiverOptions {
                    policy,
                    segment_events,
                    expire_after: expire_after
                        .map(chrono::Duration::from_std)
                        .transpose()
                        .context("--expire-after is too long")?,
                };
                inspect::archive(domain, &store, &opts, json).await
            }
            Command::Anchor {
                store,
                copy_to,
                exec,
                json,
            } => inspect::anchor(domain, &store, copy_to.as_deref(), exec.as_deref(), json).await,
            Command::Proof {
                store,
                aggregate_type,
                id,
                check,
            } => match check {
                Some(file) => inspect::check_proof(&file),
                None => {
                    let stream = aggregate_type.zip(id).context("a stream to prove")?;
                    inspect::proof(domain, &store, stream).await
                }
            },
            Command::Forget {
                store,
                subject,
                json,
            } => inspect::forget(domain, &store, &subject, json).await,
            Command::Rebuild { store, projection } => {
                inspect::rebuild(domain, &store, &projection).await
            }
            #[cfg(feature = "bench")]
            Command::Bench(args) => bench::run(args).await,
        }
    })
}
