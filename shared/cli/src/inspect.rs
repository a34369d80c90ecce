//! `chronicle history`, `audit`, `state`, `verify` and `rebuild`.

use crate::StoreArgs;
use anyhow::{anyhow, Context};
use chronicle_kernel::audit::{
    audit_page, history_page, version_at, AuditQuery, HistoryQuery, AUDIT_MAX_LIMIT,
};
use chronicle_kernel::envelope::format_timestamp;
use chronicle_kernel::{validate_id, AggregateService, Chronicle, Domain};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;

fn service<'a>(
    chronicle: &'a Chronicle,
    aggregate_type: &str,
) -> anyhow::Result<&'a Arc<dyn AggregateService>> {
    chronicle.aggregate(aggregate_type).ok_or_else(|| {
        anyhow!(
            "no aggregate type `{aggregate_type}`; known: {}",
            chronicle.aggregate_types().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The event-type column's width: the longest type shown, at least the heading's.
fn type_width(events: &[chronicle_kernel::EventEnvelope]) -> usize {
    events
        .iter()
        .map(|e| e.event_type.len())
        .max()
        .unwrap_or(0)
        .max("EVENT TYPE".len())
}

/// The events' personal fields opened (or shown erased), with one key lookup for them all.
/// `--raw` output skips this: it is what is stored, and what the chain hashes.
async fn reveal_events(
    chronicle: &chronicle_kernel::Chronicle,
    events: &mut [chronicle_kernel::EventEnvelope],
) -> anyhow::Result<()> {
    let mut all = serde_json::Value::Array(
        events
            .iter_mut()
            .map(|e| std::mem::take(&mut e.data))
            .collect(),
    );
    chronicle.reveal(&mut all).await?;
    if let serde_json::Value::Array(data) = all {
        for (e, d) in events.iter_mut().zip(data) {
            e.data = d;
        }
    }
    Ok(())
}

pub(crate) async fn history(
    domain: &Domain,
    args: &StoreArgs,
    aggregate_type: &str,
    id: &str,
    mut query: HistoryQuery,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    validate_id(id)?;
    let (_store, chronicle) = crate::open_reader(domain, args).await?;
    let svc = service(&chronicle, aggregate_type)?;
    // Page by page until the filters' matches (or `--limit` of them) are all read.
    let mut events = Vec::new();
    loop {
        let page = history_page(svc.as_ref(), id, &query).await?;
        events.extend(page.events);
        if let Some(max) = limit {
            if events.len() >= max {
                events.truncate(max);
                break;
            }
        }
        match page.next_from_version {
            Some(next) => query.from_version = next,
            None => break,
        }
    }
    if events.is_empty() {
        anyhow::bail!("{aggregate_type}/{id} has no events that match");
    }
    if !query.raw {
        reveal_events(&chronicle, &mut events).await?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let types = type_width(&events);
    println!(
        "{:>7}  {:<27}  {:<types$}  {:>6}  DATA",
        "VERSION", "RECORDED AT", "EVENT TYPE", "SCHEMA"
    );
    for e in &events {
        println!(
            "{:>7}  {:<27}  {:<types$}  {:>6}  {}",
            e.version,
            chronicle_kernel::envelope::format_timestamp(&e.recorded_at),
            e.event_type,
            format!("v{}", e.schema_version),
            e.data
        );
    }
    Ok(())
}

/// `chronicle audit`: the global audit feed of a time range, page after page until the range
/// (or `--limit`) is done.
pub(crate) async fn audit(
    domain: &Domain,
    args: &StoreArgs,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    limit: Option<usize>,
    raw: bool,
    json: bool,
) -> anyhow::Result<()> {
    if limit == Some(0) {
        anyhow::bail!("--limit must be at least 1");
    }
    let (store, chronicle) = crate::open_reader(domain, args).await?;
    let mut query = AuditQuery {
        from,
        to,
        after: None,
        limit: AUDIT_MAX_LIMIT,
        raw,
    };
    // A long range can take many pages (on DynamoDB each covers at most a day): show progress
    // on a terminal (indicatif draws nothing when stderr is not one).
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} reading the audit feed: {pos} pages, {msg}")
            .context("progress bar template")?,
    );
    let mut events = Vec::new();
    loop {
        if let Some(max) = limit {
            query.limit = (max - events.len()).min(AUDIT_MAX_LIMIT);
        }
        let page = audit_page(&chronicle, &query).await?;
        events.extend(page.events);
        bar.inc(1);
        bar.set_message(format!("{} events", events.len()));
        if limit.is_some_and(|max| events.len() >= max) {
            break;
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    bar.finish_and_clear();
    if !raw {
        reveal_events(&chronicle, &mut events).await?;
    }
    if let Some(store) = store {
        store.close();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    if events.is_empty() {
        println!(
            "no events recorded from {} to {}",
            format_timestamp(&from),
            format_timestamp(&to)
        );
        return Ok(());
    }
    let streams: Vec<String> = events
        .iter()
        .map(|e| format!("{}/{}", e.aggregate_type, e.aggregate_id))
        .collect();
    let width = streams.iter().map(String::len).max().unwrap_or(0).max(9);
    let types = type_width(&events);
    println!(
        "{:<27}  {:<width$}  {:>7}  {:<types$}  {:>6}  DATA",
        "RECORDED AT", "AGGREGATE", "VERSION", "EVENT TYPE", "SCHEMA"
    );
    for (e, stream) in events.iter().zip(&streams) {
        println!(
            "{:<27}  {:<width$}  {:>7}  {:<types$}  {:>6}  {}",
            format_timestamp(&e.recorded_at),
            stream,
            e.version,
            e.event_type,
            format!("v{}", e.schema_version),
            e.data
        );
    }
    Ok(())
}

pub(crate) async fn state(
    domain: &Domain,
    args: &StoreArgs,
    aggregate_type: &str,
    id: &str,
    version: Option<u64>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    json: bool,
) -> anyhow::Result<()> {
    validate_id(id)?;
    let (_store, chronicle) = crate::open_reader(domain, args).await?;
    let svc = service(&chronicle, aggregate_type)?;
    let version = match at {
        Some(at) => Some(version_at(svc.as_ref(), id, at).await?),
        None => version,
    };
    let mut view = svc.state(id, version).await?;
    chronicle.reveal(&mut view.body).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view.body)?);
        return Ok(());
    }
    // One field per line, names aligned: what a person reads at a terminal.
    let fields: Vec<(String, String)> = match &view.body {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let shown = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), shown)
            })
            .collect(),
        other => vec![("state".to_owned(), other.to_string())],
    };
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("{aggregate_type}/{id} at version {}", view.version);
    for (k, v) in fields {
        println!("  {k:<width$}  {v}");
    }
    Ok(())
}

pub(crate) async fn verify(
    domain: &Domain,
    args: &StoreArgs,
    one: Option<(String, String)>,
    json: bool,
) -> anyhow::Result<()> {
    let (store, chronicle) = crate::open_reader(domain, args).await?;
    let started = std::time::Instant::now();
    let report = match one {
        Some((aggregate_type, id)) => {
            validate_id(&id)?;
            let stream = chronicle_kernel::StreamId::new(&aggregate_type, &id);
            let mut report = chronicle_kernel::chain::VerifyReport {
                streams: 1,
                ..Default::default()
            };
            match chronicle.verify(&stream).await? {
                Ok(0) => anyhow::bail!("{stream} has no events"),
                Ok(n) => report.events = n,
                Err(b) => {
                    report.events = b.version - 1;
                    report.breaks.push(b);
                }
            }
            report
        }
        None => {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} verifying: {pos} streams ({per_sec})")
                    .context("progress bar template")?,
            );
            let report = chronicle
                .verify_all(16, |done| bar.set_position(done))
                .await?;
            bar.finish_and_clear();
            report
        }
    };
    if let Some(store) = store {
        store.close();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for b in &report.breaks {
            println!("BROKEN  {b}");
        }
        for p in &report.anchor_log {
            println!("ANCHORS {p}");
        }
        println!(
            "{} of {} streams verified ({} events) in {:.2?}{}",
            report.streams - report.breaks.len() as u64,
            report.streams,
            report.events,
            started.elapsed(),
            report
                .anchor
                .map(|a| format!("; held to anchor #{a}"))
                .unwrap_or_default()
        );
    }
    if let Some(b) = report.breaks.first() {
        return Err(anyhow!(
            "{} stream(s) fail verification; the first: {b}",
            report.breaks.len()
        ));
    }
    if let Some(p) = report.anchor_log.first() {
        return Err(anyhow!("the anchor log is broken: {p}"));
    }
    Ok(())
}

/// `chronicle anchor`: anchors every stream's head now, and sends the anchor where asked.
pub(crate) async fn anchor(
    domain: &Domain,
    args: &StoreArgs,
    copy_to: Option<&std::path::Path>,
    exec: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (store, chronicle) = crate::open_reader(domain, args).await?;
    // One anchor at a time per data directory: two at once would both take the next number.
    let _turn = match args.backend {
        crate::Backend::Embedded => {
            let dir = crate::anchor_dir(args);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let lock = std::fs::File::create(dir.join("anchor.lock"))?;
            lock.lock().context("waiting for another anchor")?;
            Some(lock)
        }
        crate::Backend::Aws => None,
    };
    let started = std::time::Instant::now();
    let anchor = chronicle
        .anchor()
        .await?
        .context("this store has no anchor log")?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(store) = store {
        store.close();
    }
    let line = serde_json::to_string(&anchor)?;
    if let Some(path) = copy_to {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("appending the anchor to {}", path.display()))?;
    }
    if let Some(cmd) = exec {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", cmd])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{cmd}`"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(line.as_bytes())?;
        }
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "`{cmd}` failed ({status}): the anchor is kept in the log"
        );
    }
    if json {
        println!("{line}");
    } else {
        println!(
            "anchor #{}: {} streams ({} events), root {} in {secs:.2} s",
            anchor.sequence, anchor.streams, anchor.events, anchor.root
        );
    }
    Ok(())
}

/// `chronicle proof TYPE ID`: the stream's inclusion proof under the latest anchor, as JSON.
pub(crate) async fn proof(
    domain: &Domain,
    args: &StoreArgs,
    (aggregate_type, id): (String, String),
) -> anyhow::Result<()> {
    validate_id(&id)?;
    let (store, chronicle) = crate::open_reader(domain, args).await?;
    let stream = chronicle_kernel::StreamId::new(&aggregate_type, &id);
    let proof = chronicle.anchor_proof(&stream).await?;
    if let Some(store) = store {
        store.close();
    }
    let proof = proof.with_context(|| format!("no anchor holds {stream}"))?;
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(())
}

/// `chronicle proof --check FILE`: whether a proof holds, with nothing but the proof.
pub(crate) fn check_proof(file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let proof: chronicle_kernel::anchor::Proof =
        serde_json::from_str(&text).context("not a proof `chronicle proof` printed")?;
    proof.check().map_err(|e| anyhow!("the proof fails: {e}"))?;
    println!(
        "{}/{} v{} {} is under anchor #{} (root {}, {})",
        proof.head.aggregate_type,
        proof.head.aggregate_id,
        proof.head.version,
        proof.head.hash,
        proof.anchor.sequence,
        proof.anchor.root,
        chronicle_kernel::envelope::format_timestamp(&proof.anchor.anchored_at)
    );
    Ok(())
}

/// `chronicle forget SUBJECT`: the subject's key destroyed and the erasure recorded, here, in
/// the server holding the data directory, or on AWS.
pub(crate) async fn forget(
    domain: &Domain,
    args: &StoreArgs,
    subject: &str,
    json: bool,
) -> anyhow::Result<()> {
    let report: serde_json::Value = match args.backend {
        crate::Backend::Aws => {
            let app = chronicle_lambda::App::from_env(domain.clone()).await?;
            serde_json::to_value(app.chronicle.forget(subject).await?)?
        }
        crate::Backend::Embedded => {
            match chronicle_embedded::locked_by(&args.data_dir).and_then(|h| h.url) {
                Some(url) => forget_through(&url, subject).await?,
                None => {
                    let (store, chronicle) = crate::open(domain, args, crate::Access::Write)?;
                    let done = chronicle.forget(subject).await;
                    store.close();
                    serde_json::to_value(done?)?
                }
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let at = report["forgotten_at"].as_str().unwrap_or("?");
    let version = report["version"].as_u64().unwrap_or(0);
    if report["key_destroyed"] == true || report["recorded"] == true {
        println!(
            "forgot {subject} at {at}: key destroyed, erasure recorded as {}/{subject} v{version}; its personal fields now read as erased",
            chronicle_kernel::personal::SUBJECTS_TYPE
        );
    } else {
        println!("{subject} was forgotten already, at {at}: nothing left to destroy");
    }
    Ok(())
}

/// Asks the server holding the data directory to forget `subject`.
async fn forget_through(url: &str, subject: &str) -> anyhow::Result<serde_json::Value> {
    validate_id(subject).map_err(|e| anyhow!("not a data subject id: {e}"))?;
    let r = reqwest::Client::new()
        .post(format!("{url}/admin/subjects/{subject}/forget"))
        .send()
        .await
        .with_context(|| {
            format!(
                "asking the server at {url}, which holds the data directory, to forget {subject}"
            )
        })?;
    let ok = r.status().is_success();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    if !ok {
        return Err(anyhow!(
            "the server at {url} refused: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("no reason given")
        ));
    }
    eprintln!("the data directory is in use by the server at {url}: forgotten there");
    Ok(body)
}

pub(crate) async fn rebuild(
    domain: &Domain,
    args: &StoreArgs,
    projection: &str,
) -> anyhow::Result<()> {
    if args.backend == crate::Backend::Aws {
        return rebuild_by_streams(domain, projection).await;
    }
    // One writer per data directory: beside a running server the rebuild runs in it.
    if let Some(url) = chronicle_embedded::locked_by(&args.data_dir).and_then(|h| h.url) {
        return rebuild_through(&url, projection).await;
    }
    let (store, chronicle) = crate::open(domain, args, crate::Access::Write)?;
    let runner = chronicle.runner(projection).ok_or_else(|| {
        anyhow!(
            "no projection `{projection}`; known: {}",
            chronicle
                .projections()
                .iter()
                .map(|p| p.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {projection}"));
    let started = std::time::Instant::now();
    let rebuilt = runner
        .rebuild(|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
    bar.finish_and_clear();
    if let Some(at) = rebuilt.resumed_from {
        println!(
            "resumed the unfinished rebuild of generation {} from feed position {at}",
            rebuilt.generation
        );
    }
    println!(
        "rebuilt {projection} as generation {} up to feed position {} in {:.2?}; reads now use it",
        rebuilt.generation,
        bar.position(),
        started.elapsed()
    );
    store.close();
    Ok(())
}

/// Asks the server holding the data directory to rebuild (`POST
/// /admin/projections/{name}/rebuild`) and follows its progress on `GET /admin/projections`
/// until that rebuild is done or failed.
async fn rebuild_through(url: &str, projection: &str) -> anyhow::Result<()> {
    use serde_json::Value;
    let client = reqwest::Client::new();
    let status_of = |all: &Value| {
        all["projections"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == projection))
            .cloned()
    };
    let get_status = || async {
        let r = client
            .get(format!("{url}/admin/projections"))
            .send()
            .await
            .with_context(|| format!("asking the server at {url} for the projections"))?;
        anyhow::Ok(r.json::<Value>().await?)
    };
    let started = std::time::Instant::now();
    // What the status showed before: the rebuild to wait for is a newer record than this
    // (a new generation, or the same one resumed and updated since).
    let before = get_status().await.map(|all| {
        status_of(&all)
            .map(|p| p["rebuild"].clone())
            .unwrap_or(Value::Null)
    })?;
    let r = client
        .post(format!("{url}/admin/projections/{projection}/rebuild"))
        .send()
        .await
        .with_context(|| {
            format!("asking the server at {url}, which holds the data directory, to rebuild")
        })?;
    if !r.status().is_success() {
        let body: Value = r.json().await.unwrap_or(Value::Null);
        return Err(anyhow!(
            "the server at {url} refused the rebuild: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("no reason given")
        ));
    }
    eprintln!("the data directory is in use by the server at {url}: rebuilding there");
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {projection}"));
    let is_ours = |r: &Value| {
        let (gen, before_gen) = (r["generation"].as_u64(), before["generation"].as_u64());
        gen > before_gen
            || (gen == before_gen
                && before["state"] != "done"
                && r["updated_at"] != before["updated_at"])
    };
    loop {
        let status = status_of(&get_status().await?)
            .ok_or_else(|| anyhow!("the server no longer lists {projection}"))?;
        let rebuild = &status["rebuild"];
        if !is_ours(rebuild) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        let this = rebuild["generation"].as_u64();
        bar.set_length(rebuild["total"].as_u64().unwrap_or(0));
        bar.set_position(rebuild["processed"].as_u64().unwrap_or(0));
        match rebuild["state"].as_str() {
            Some("done") => {
                bar.finish_and_clear();
                println!(
                    "rebuilt {projection} as generation {} in the server at {url} in {:.2?}; reads now use it",
                    this.unwrap_or(0),
                    started.elapsed()
                );
                return Ok(());
            }
            Some("failed") => {
                bar.finish_and_clear();
                return Err(anyhow!(
                    "the rebuild of {projection} failed in the server at {url}: {}",
                    rebuild["failure"]
                ));
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// On AWS there is no ordered feed: the rebuild folds every stream whole (a Scan for the
/// stream list, a Query per stream), switches, then catches up what arrived meanwhile.
async fn rebuild_by_streams(domain: &Domain, projection: &str) -> anyhow::Result<()> {
    let app = chronicle_lambda::App::from_env(domain.clone()).await?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} events ({per_sec})")
            .context("progress bar template")?,
    );
    bar.set_message(format!("rebuilding {projection}"));
    let started = std::time::Instant::now();
    let rebuilt = app
        .chronicle
        .rebuild_by_streams(projection, |events, _| bar.set_position(events))
        .await?;
    bar.finish_and_clear();
    if let Some(at) = rebuilt.resumed_from {
        println!(
            "resumed the unfinished rebuild of generation {} after {at} events",
            rebuilt.generation
        );
    }
    println!(
        "rebuilt {projection} as generation {} from {} events in {:.2?}; reads now use it",
        rebuilt.generation,
        bar.position(),
        started.elapsed()
    );
    Ok(())
}

pub(crate) async fn archive(
    domain: &Domain,
    args: &StoreArgs,
    opts: &chronicle_kernel::archived::ArchiverOptions,
    json: bool,
) -> anyhow::Result<()> {
    use chronicle_kernel::archived::{run_archiver, run_archiver_expiring};
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} archiving: {pos} streams looked at ({per_sec})")
            .context("progress bar template")?,
    );
    let started = std::time::Instant::now();
    let (report, place) = match args.backend {
        crate::Backend::Embedded => {
            if opts.expire_after.is_some() {
                anyhow::bail!(
                    "--expire-after is for --backend aws: the embedded store is append-only and \
                     keeps every event"
                );
            }
            let (store, _) = crate::open(domain, args, crate::Access::Write)?;
            let dir = crate::archive_dir(args);
            let archive = chronicle_embedded::DirArchive::open(&dir)?;
            let report =
                run_archiver(&*store, &*store, &archive, opts, |n| bar.set_position(n)).await;
            store.close();
            (report?, dir.display().to_string())
        }
        crate::Backend::Aws => {
            let app = chronicle_lambda::App::from_env(domain.clone()).await?;
            let report =
                run_archiver_expiring(&*app.events, &*app.snapshots, &*app.archive, opts, |n| {
                    bar.set_position(n)
                })
                .await?;
            (report, format!("s3://{}", app.settings.archive_bucket))
        }
    };
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "archived {} events of {} streams ({} looked at) into {} segment(s), {:.1} MB, in {place} in {:.2?}",
            report.events_archived,
            report.streams_archived,
            report.streams,
            report.segments.len(),
            report.bytes as f64 / 1e6,
            started.elapsed()
        );
        if opts.expire_after.is_some() {
            println!("{} hot copies marked to expire", report.events_expiring);
        }
        for b in &report.refused {
            println!("NOT ARCHIVED  {b}");
        }
    }
    match report.refused.first() {
        None => Ok(()),
        Some(b) => Err(anyhow!(
            "{} stream(s) were not archived because their stored chain does not verify; the first: {b}",
            report.refused.len()
        )),
    }
}
