//! `chronicle bench`: append through the normal command path with concurrent writers (each
//! command acknowledged only once durable), then replay every account from the stored events.

use anyhow::{bail, Context};
use chronicle_accounts::{Account, Status};
use chronicle_embedded::DirArchive;
use chronicle_kernel::archive::{Archive, Catalog};
use chronicle_kernel::archived::{replay_archived, run_archiver, ArchivePolicy, ArchiverOptions};
use chronicle_kernel::{replay::replay_all, Aggregate, BulkReplay, CommandOptions, StreamListing};
use hdrhistogram::Histogram;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Number of accounts.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Events per account: one Open, then alternating Deposit 100 / Withdraw 30.
    #[arg(long, default_value_t = 100)]
    events_per_account: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Where to put the store; must not exist yet. Default: a temporary directory in the
    /// current directory (same disk as a real data directory), removed afterwards.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Snapshot every N events during the append phase (0: never).
    #[arg(long, default_value_t = 100)]
    snapshot_every: u64,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
    /// Each account's Open carries personal data (holder_name and email, of a subject per
    /// account): sealed with the subject's key, which the first command creates.
    #[arg(long, conflicts_with = "reactions")]
    personal_data: bool,
    /// Skip the append phase and replay the existing store in --data-dir (written by an
    /// earlier `bench --data-dir` with the same workload flags).
    #[arg(long, requires = "data_dir")]
    replay_only: bool,
    /// Stop after the append phase (for runs over millions of streams): its figures, and
    /// every account's version checked, without the replay, verify and archive phases.
    #[arg(long, conflicts_with = "replay_only")]
    append_only: bool,
    /// Measure the reaction path instead (the orders sample): orders placed, each reserved
    /// line by line and confirmed by the fulfilment reaction; latency from placed to confirmed.
    #[arg(long, conflicts_with_all = ["replay_only", "append_only"])]
    reactions: bool,
    /// With --reactions: orders to place.
    #[arg(long, default_value_t = 2_000, requires = "reactions")]
    orders: usize,
    /// With --reactions: lines per order (each a reservation on its own sku).
    #[arg(long, default_value_t = 3, requires = "reactions")]
    order_lines: usize,
    /// With --reactions: clients placing orders at once, each waiting for its answer.
    #[arg(long, default_value_t = 4, requires = "reactions")]
    placers: usize,
    /// `aws`: count the DynamoDB request units commands and stream batches cost, on fresh
    /// resources at the endpoint the AWS_* settings name (moto, DynamoDB Local, an account).
    #[arg(long, value_enum, default_value_t = crate::Backend::Embedded,
          conflicts_with_all = ["replay_only", "append_only", "reactions", "data_dir"])]
    backend: crate::Backend,
    /// With --backend aws: commands per phase.
    #[arg(long, default_value_t = 200)]
    commands: usize,
}

/// Streams verified at once: enough to keep both cores and the reader pool busy.
const VERIFY_CONCURRENCY: usize = 16;

fn command_for(round: usize) -> serde_json::Value {
    match round {
        0 => json!({"type": "Open", "owner": "bench"}),
        r if r % 2 == 1 => json!({"type": "Deposit", "amount": 100}),
        _ => json!({"type": "Withdraw", "amount": 30}),
    }
}

fn expected_balance(events: usize) -> u64 {
    let rounds = events.saturating_sub(1);
    let deposits = rounds.div_ceil(2) as u64;
    let withdrawals = (rounds / 2) as u64;
    deposits * 100 - withdrawals * 30
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// Resident memory now (VmRSS), in bytes.
fn rss() -> u64 {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak so the next phase is measured on its own (Linux 4.0+; best effort). Heap
/// an earlier phase freed is handed back first: glibc keeps it mapped, and it would count.
fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; no memory we hold moves.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.backend == crate::Backend::Aws {
        let bench = crate::bench_aws::AwsBench {
            commands: args.commands,
            json: args.json,
        };
        return crate::bench_aws::run(bench).await;
    }
    if args.accounts == 0 || args.events_per_account == 0 || args.writers == 0 {
        bail!("--accounts, --events-per-account and --writers must be at least 1");
    }
    let (_tmp, dir) = match &args.data_dir {
        Some(d) if args.replay_only && !d.exists() => bail!("{} does not exist", d.display()),
        Some(d) if d.exists() && !args.replay_only => {
            bail!("{} exists; the bench needs a fresh directory", d.display())
        }
        Some(d) => (None, d.clone()),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("chronicle-bench-")
                .tempdir_in(".")
                .context("creating a temporary data directory")?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    let store_args = crate::StoreArgs {
        data_dir: dir.clone(),
        snapshot_every: args.snapshot_every,
        backend: crate::Backend::Embedded,
    };
    if args.reactions {
        let bench = crate::bench_reactions::ReactionBench {
            orders: args.orders,
            lines: args.order_lines,
            placers: args.placers,
            json: args.json,
        };
        return crate::bench_reactions::run(bench, &store_args).await;
    }
    let total_events = (args.accounts * args.events_per_account) as u64;
    let (hist, append_secs, append_peak, append_cpu) = if args.replay_only {
        (Histogram::<u64>::new(3)?, 0.0, 0, 0.0)
    } else {
        append(&args, &store_args, &dir).await?
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let append_report = json!({
        "accounts": args.accounts,
        "events_per_account": args.events_per_account,
        "writers": args.writers,
        "events": total_events,
        "append_seconds": append_secs,
        "append_events_per_sec": total_events as f64 / append_secs,
        "append_p50_ms": ms(hist.value_at_quantile(0.50)),
        "append_p90_ms": ms(hist.value_at_quantile(0.90)),
        "append_p99_ms": ms(hist.value_at_quantile(0.99)),
        "append_p999_ms": ms(hist.value_at_quantile(0.999)),
        "append_max_ms": ms(hist.max()),
        "append_peak_rss_bytes": append_peak,
        "append_cpu_us_per_event": append_cpu,
    });
    let append_line = || {
        println!(
            "append  {total_events} events in {append_secs:.2} s = {:.0} events/s durable \
             (p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms), peak RSS {:.0} MiB, \
             {append_cpu:.1} µs CPU per event",
            total_events as f64 / append_secs,
            ms(hist.value_at_quantile(0.50)),
            ms(hist.value_at_quantile(0.90)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.value_at_quantile(0.999)),
            ms(hist.max()),
            mb(append_peak)
        );
    };
    if args.append_only {
        check_versions(&args, &store_args).await?;
        if args.json {
            println!("{append_report}");
        } else {
            append_line();
            println!("checked every account's version");
        }
        return Ok(());
    }

    // Replay: a fresh process view of the store, every account folded from every event.
    let (store, chronicle) = crate::open(
        &chronicle_accounts::domain(),
        &store_args,
        crate::Access::Write,
    )?;
    let feed: Arc<dyn BulkReplay> = store.clone();
    let schema = chronicle
        .aggregate(Account::TYPE)
        .context("accounts are registered")?
        .schema()
        .clone();
    reset_peak_rss();
    let started = Instant::now();
    let (states, read) = replay_all::<Account>(feed.as_ref(), &schema, 1024).await?;
    let replay_secs = started.elapsed().as_secs_f64();
    let replay_peak = peak_rss();

    // Verify: every stream's hash chain recomputed, as `chronicle verify --all` does.
    let started = Instant::now();
    let verified = chronicle.verify_all(VERIFY_CONCURRENCY, |_| {}).await?;
    let verify_secs = started.elapsed().as_secs_f64();
    store.close();
    if !verified.breaks.is_empty() || verified.events != total_events {
        bail!(
            "verify found {} events in {} streams and {} broken chains (first: {:?})",
            verified.events,
            verified.streams,
            verified.breaks.len(),
            verified.breaks.first().map(ToString::to_string)
        );
    }

    // The figures mean nothing if the result is wrong.
    let want = expected_balance(args.events_per_account);
    let check = |what: &str, states: &rustc_hash::FxHashMap<String, (u64, Account)>, read: u64| {
        if read != total_events || states.len() != args.accounts {
            bail!(
                "{what} read {read} events for {} accounts; expected {total_events} for {}",
                states.len(),
                args.accounts
            );
        }
        for (id, (version, account)) in states {
            if account.balance != want
                || *version != args.events_per_account as u64
                || account.status != Status::Open
            {
                bail!(
                    "{what}: {id}: balance {} at v{version}; expected {want}",
                    account.balance
                );
            }
        }
        Ok(())
    };
    check("replay", &states, read)?;

    // Archive: every event but each stream's head into segments, as `chronicle archive
    // --older-than 0s` does (an existing archive, with --replay-only, is used as it is).
    let (store, chronicle) = crate::open(
        &chronicle_accounts::domain(),
        &store_args,
        crate::Access::Write,
    )?;
    let feed: Arc<dyn BulkReplay> = store.clone();
    let archive = DirArchive::open(crate::archive_dir(&store_args))?;
    let started = Instant::now();
    let archived = if archive.list_segments("").await?.is_empty() {
        let opts = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::zero()));
        Some(run_archiver(&*store, &*store, &archive, &opts, |_| {}).await?)
    } else {
        None
    };
    let archive_secs = started.elapsed().as_secs_f64();

    // Replay from the archive: segments read and folded on every core, then the hot heads.
    reset_peak_rss();
    let base_rss = rss();
    let started = Instant::now();
    let catalog = Catalog::load(&archive).await?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (arch_states, counts) =
        replay_archived::<Account>(&archive, &catalog, feed.as_ref(), &schema, workers).await?;
    let replay_archive_secs = started.elapsed().as_secs_f64();
    let replay_archive_peak = peak_rss();
    // What the process held before (the store's page caches from the archive phase, say).
    let replay_archive_base = base_rss;
    check(
        "replay from the archive",
        &arch_states,
        counts.archived_events + counts.hot_events,
    )?;
    drop(arch_states);

    // Verify with the archive: the hot chains, every segment's chains, and that they agree.
    let started = Instant::now();
    let verified_both = chronicle.verify_all(VERIFY_CONCURRENCY, |_| {}).await?;
    let verify_archive_secs = started.elapsed().as_secs_f64();
    store.close();
    if !verified_both.breaks.is_empty() || verified_both.events != total_events {
        bail!(
            "verify with the archive found {} events and {} broken chains (first: {:?})",
            verified_both.events,
            verified_both.breaks.len(),
            verified_both.breaks.first().map(ToString::to_string)
        );
    }
    let archive_bytes: u64 = catalog
        .segments
        .iter()
        .map(|s| s.index.frames.iter().map(|f| f.len).sum::<u64>())
        .sum();

    let mut report = append_report;
    let more = json!({
        "replay_seconds": replay_secs,
        "replay_events_per_sec": read as f64 / replay_secs,
        "replay_peak_rss_bytes": replay_peak,
        "verify_seconds": verify_secs,
        "verify_events_per_sec": verified.events as f64 / verify_secs,
        "peak_rss_bytes": append_peak.max(replay_peak),
        "archive_seconds": archived.as_ref().map(|_| archive_secs),
        "archive_events": catalog.events(),
        "archive_segments": catalog.segments.len(),
        "archive_bytes": archive_bytes,
        "replay_archive_seconds": replay_archive_secs,
        "replay_archive_events_per_sec": total_events as f64 / replay_archive_secs,
        "replay_archive_hot_events": counts.hot_events,
        "replay_archive_peak_rss_bytes": replay_archive_peak,
        "replay_archive_base_rss_bytes": replay_archive_base,
        "verify_archive_seconds": verify_archive_secs,
    });
    if let (Some(all), Some(more)) = (report.as_object_mut(), more.as_object()) {
        all.extend(more.clone());
    }
    let archive_lines = || {
        if archived.is_some() {
            println!(
                "archive {} events into {} segments ({:.0} MiB) in {archive_secs:.2} s",
                catalog.events(),
                catalog.segments.len(),
                mb(archive_bytes)
            );
        }
        println!(
            "replay from archive  {} events ({} from segments, {} hot) in {replay_archive_secs:.3} s = {:.0} events/s, peak RSS {:.0} MiB ({:.0} MiB held before it)",
            total_events,
            counts.archived_events,
            counts.hot_events,
            total_events as f64 / replay_archive_secs,
            mb(replay_archive_peak),
            mb(replay_archive_base)
        );
        println!(
            "verify with archive  {} events, hot chains + segments in {verify_archive_secs:.3} s",
            verified_both.events
        );
    };
    if args.json {
        println!("{report}");
    } else if args.replay_only {
        println!(
            "replay  {read} events, {} accounts in {replay_secs:.3} s = {:.0} events/s, peak RSS {:.0} MiB",
            states.len(),
            read as f64 / replay_secs,
            mb(replay_peak)
        );
        println!(
            "verify  {} events, {} hash chains in {verify_secs:.3} s = {:.0} events/s",
            verified.events,
            verified.streams,
            verified.events as f64 / verify_secs
        );
        archive_lines();
    } else {
        append_line();
        println!(
            "replay  {read} events, {} accounts in {replay_secs:.3} s = {:.0} events/s, peak RSS {:.0} MiB",
            states.len(),
            read as f64 / replay_secs,
            mb(replay_peak)
        );
        println!(
            "verify  {} events, {} hash chains in {verify_secs:.3} s = {:.0} events/s",
            verified.events,
            verified.streams,
            verified.events as f64 / verify_secs
        );
        archive_lines();
        println!("checked every account's balance ({want}) and version, and every chain");
    }
    Ok(())
}

/// After `--append-only`: every account at its final version, read from the store (the
/// stream heads), in pages of the stream listing.
async fn check_versions(args: &BenchArgs, store_args: &crate::StoreArgs) -> anyhow::Result<()> {
    use chronicle_kernel::{EventStore, StreamId};
    let (store, _) = crate::open(
        &chronicle_accounts::domain(),
        store_args,
        crate::Access::Read,
    )?;
    let want = args.events_per_account as u64;
    let mut seen = 0usize;
    let mut cursor = None;
    loop {
        let page = store.list_streams(cursor.take(), 10_000).await?;
        for s in &page.streams {
            let v = store
                .stream_version(&StreamId::new(&s.aggregate_type, &s.aggregate_id))
                .await?;
            if s.aggregate_type != Account::TYPE || v != want {
                bail!("{s}: version {v}; expected {want}");
            }
        }
        seen += page.streams.len();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if seen != args.accounts {
        bail!("{seen} streams stored; expected {}", args.accounts);
    }
    Ok(())
}

/// The append phase: returns the latency histogram (µs), the seconds taken and peak RSS.
async fn append(
    args: &BenchArgs,
    store_args: &crate::StoreArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(Histogram<u64>, f64, u64, f64)> {
    let total_events = (args.accounts * args.events_per_account) as u64;
    let (store, chronicle) = crate::open(
        &chronicle_accounts::domain(),
        store_args,
        crate::Access::Write,
    )?;
    let svc = chronicle
        .aggregate(Account::TYPE)
        .context("accounts are registered")?
        .clone();
    if !args.json {
        eprintln!(
            "append: {} accounts x {} events = {total_events} events, {} writers, data in {}",
            args.accounts,
            args.events_per_account,
            args.writers,
            dir.display()
        );
    }

    // Append: writer w owns accounts w, w + writers, ...; it walks them round by round so its
    // commands interleave across aggregates like real traffic.
    let started = Instant::now();
    let cpu0 = process_cpu_us();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let svc = svc.clone();
        // Ids made as they are used: a list of ten million of them would be most of the
        // append phase's peak RSS, which measures the store.
        let (accounts, writers) = (args.accounts, args.writers);
        let rounds = args.events_per_account;
        let personal_data = args.personal_data;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut id = String::new();
            for round in 0..rounds {
                let command = command_for(round).to_string();
                for i in (w..accounts).step_by(writers) {
                    id.clear();
                    std::fmt::Write::write_fmt(&mut id, format_args!("acct-{i:06}"))?;
                    let id = id.as_str();
                    let personal = (personal_data && round == 0).then(|| {
                        json!({"type": "Open", "owner": format!("subject-{i:06}"),
                               "holder_name": format!("Holder {i:06}"),
                               "email": format!("holder-{i:06}@example.com")})
                        .to_string()
                    });
                    let command = personal.as_deref().unwrap_or(&command);
                    let t = Instant::now();
                    svc.execute(id, command.as_bytes(), CommandOptions::default())
                        .await
                        .with_context(|| format!("{id} round {round}"))?;
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                }
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let append_secs = started.elapsed().as_secs_f64();
    let append_cpu = (process_cpu_us() - cpu0) as f64 / total_events as f64;
    let append_peak = peak_rss();
    drop(svc);
    drop(chronicle);
    store.close();
    drop(store);

    Ok((hist, append_secs, append_peak, append_cpu))
}

/// CPU time (user + system) this process has used, all threads. Per event it moves far less
/// from hour to hour than events/s on a shared machine, so builds compare better by it.
fn process_cpu_us() -> u64 {
    // SAFETY: getrusage only writes the struct it is given; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
