//! `plinth events verify|export|import|replay`: offline tools over the
//! configured event store. Like `plinth migrate`, each command opens the
//! store the node configuration names (SQLite under `data_dir`, or
//! PostgreSQL from `storage.url`) and applies the event store's pending
//! migrations first, as a starting node would; it needs no running node.
//!
//! - `verify` checks every tenant's hash chains and global log (or one
//!   tenant's) and prints each problem found; it exits with 1 when any.
//! - `export` writes a tenant's stored events (or one stream's), then its
//!   streams' retention and deletion states and snapshots, as JSON lines
//!   of `plinth_events::ExportLine`, to stdout or a file.
//! - `import` writes such a file into a tenant; events already there are
//!   skipped, so an import can be repeated or resumed.
//! - `replay` reads a tenant's global log from a position, as JSON lines
//!   to stdout or POSTed one by one, in order, to an HTTP endpoint; it
//!   stops at the first answer that is not 2xx.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::TryStreamExt;
use plinth_core::TenantId;
use plinth_core::config::PlinthConfig;
use plinth_engines::Store;
use plinth_events::{
    AllFilter, EVENTS_MIGRATIONS, EventStore, ExportLine, ReadAllRequest, RecordedEvent,
    StreamName, VerifyReport,
};

/// Records handed to one `EventStore::import` call.
const IMPORT_BATCH_SIZE: usize = 500;
/// Events read per page of a replay.
const REPLAY_PAGE_SIZE: usize = 500;
/// How long one replay POST may take.
const REPLAY_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a refusing endpoint's answer is quoted.
const QUOTED_BODY_LIMIT: usize = 300;

#[derive(Debug, Args)]
pub struct EventsArguments {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Check hash chains and the global log; print every problem; exit 1 when any.
    Verify(VerifyArguments),
    /// Write stored events as JSON lines.
    Export(ExportArguments),
    /// Import a JSON-lines export; records already present are skipped.
    Import(ImportArguments),
    /// Read the global log from a position, to stdout or to an HTTP endpoint.
    Replay(ReplayArguments),
}

#[derive(Debug, Args)]
pub struct VerifyArguments {
    /// Only this tenant; every tenant with events when absent.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArguments {
    /// Only this stream.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    #[arg(long, value_name = "TENANT", default_value = TenantId::DEFAULT)]
    pub tenant: String,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArguments {
    /// A file written by `plinth events export`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[arg(long, value_name = "TENANT", default_value = TenantId::DEFAULT)]
    pub tenant: String,
}

#[derive(Debug, Args)]
pub struct ReplayArguments {
    /// The first global position replayed.
    #[arg(long, value_name = "POSITION")]
    pub from: u64,
    /// Only this stream's events.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    #[arg(long, value_name = "TENANT", default_value = TenantId::DEFAULT)]
    pub tenant: String,
    /// POST each event (JSON) here, in order, instead of printing it.
    #[arg(long, value_name = "URL")]
    pub to_url: Option<String>,
}

pub async fn run(config: PlinthConfig, arguments: EventsArguments) -> anyhow::Result<()> {
    let store = Store::open(&config)
        .await
        .map_err(|error| anyhow::anyhow!("cannot open the store: {error}"))?;
    let outcome = run_on_store(&store, &config, arguments).await;
    store.close().await;
    outcome
}

async fn run_on_store(
    store: &Store,
    config: &PlinthConfig,
    arguments: EventsArguments,
) -> anyhow::Result<()> {
    store
        .migrate(&[&EVENTS_MIGRATIONS])
        .await
        .map_err(|error| anyhow::anyhow!("cannot migrate the event store: {error}"))?;
    let events = EventStore::new(store, config.events.clone())
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    match arguments.command {
        EventsCommand::Verify(verify_arguments) => verify(&events, verify_arguments).await,
        EventsCommand::Export(export_arguments) => export(&events, export_arguments).await,
        EventsCommand::Import(import_arguments) => import(&events, import_arguments).await,
        EventsCommand::Replay(replay_arguments) => replay(&events, replay_arguments).await,
    }
}

fn parse_tenant(text: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(text).map_err(|error| anyhow::anyhow!("--tenant: {}", error.detail()))
}

fn parse_stream(text: Option<&str>) -> anyhow::Result<Option<StreamName>> {
    text.map(StreamName::parse)
        .transpose()
        .map_err(|error| anyhow::anyhow!("--stream: {}", error.detail()))
}

async fn verify(events: &EventStore, arguments: VerifyArguments) -> anyhow::Result<()> {
    let tenants = match &arguments.tenant {
        Some(tenant) => vec![parse_tenant(tenant)?],
        None => events
            .tenants_with_events()
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?,
    };
    let mut problems = 0u64;
    for tenant in &tenants {
        let report = events
            .verify(tenant)
            .await
            .map_err(|error| anyhow::anyhow!("verifying tenant `{tenant}`: {error}"))?;
        print_verify_report(&report);
        problems += report.problems.len() as u64 + report.unlisted_problems;
    }
    if problems > 0 {
        bail!("{problems} integrity problems found");
    }
    println!("{} tenants verified, no problems", tenants.len());
    Ok(())
}

/// One line per tenant, then one per problem.
fn print_verify_report(report: &VerifyReport) {
    let head = report
        .head_position
        .map_or("none".to_string(), |head| head.to_string());
    let verdict = if report.is_intact() {
        "intact"
    } else {
        "DAMAGED"
    };
    println!(
        "tenant `{}`: {verdict}: {} events in {} streams checked, head position {head}",
        report.tenant, report.events_checked, report.streams_checked
    );
    for problem in &report.problems {
        let mut place = Vec::new();
        if let Some(stream) = &problem.stream {
            place.push(format!("stream `{stream}`"));
        }
        if let Some(revision) = problem.revision {
            place.push(format!("revision {revision}"));
        }
        if let Some(position) = problem.position {
            place.push(format!("position {position}"));
        }
        let kind = serde_json::to_value(problem.kind)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("  {kind} at {}: {}", place.join(", "), problem.detail);
    }
    if report.unlisted_problems > 0 {
        println!("  ... and {} more problems", report.unlisted_problems);
    }
}

async fn export(events: &EventStore, arguments: ExportArguments) -> anyhow::Result<()> {
    let tenant = parse_tenant(&arguments.tenant)?;
    let stream = parse_stream(arguments.stream.as_deref())?;
    let mut output: Box<dyn Write> = match &arguments.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut lines = events.export(&tenant, stream);
    let mut exported_events = 0u64;
    let mut other_lines = 0u64;
    while let Some(line) = lines
        .try_next()
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?
    {
        write_json_line(&mut output, &line)?;
        match line {
            ExportLine::Event(_) => exported_events += 1,
            ExportLine::Stream(_) | ExportLine::Snapshot(_) => other_lines += 1,
        }
    }
    output.flush().context("cannot write the export")?;
    eprintln!(
        "exported {exported_events} events of tenant `{tenant}` and {other_lines} stream states and snapshots"
    );
    Ok(())
}

fn write_json_line(output: &mut dyn Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *output, value).context("cannot write a JSON line")?;
    output.write_all(b"\n").context("cannot write a JSON line")
}

async fn import(events: &EventStore, arguments: ImportArguments) -> anyhow::Result<()> {
    let tenant = parse_tenant(&arguments.tenant)?;
    let file = std::fs::File::open(&arguments.file)
        .with_context(|| format!("cannot open {}", arguments.file.display()))?;
    let mut total = plinth_events::ImportReport::default();
    let mut batch = Vec::with_capacity(IMPORT_BATCH_SIZE);
    let mut line_number = 0u64;
    for line in BufReader::new(file).lines() {
        line_number += 1;
        let line = line.with_context(|| format!("cannot read {}", arguments.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(parse_record(&arguments.file, line_number, &line)?);
        if batch.len() == IMPORT_BATCH_SIZE {
            let report =
                import_batch(events, &tenant, std::mem::take(&mut batch), total.imported).await?;
            add_to_total(&mut total, report);
        }
    }
    let report = import_batch(events, &tenant, batch, total.imported).await?;
    add_to_total(&mut total, report);
    println!(
        "{}: {} events imported into tenant `{tenant}`, {} already present, {} stream states and {} snapshots applied",
        arguments.file.display(),
        total.imported,
        total.skipped,
        total.streams,
        total.snapshots,
    );
    Ok(())
}

fn add_to_total(total: &mut plinth_events::ImportReport, report: plinth_events::ImportReport) {
    total.imported += report.imported;
    total.skipped += report.skipped;
    total.streams += report.streams;
    total.snapshots += report.snapshots;
}

fn parse_record(file: &Path, line_number: u64, line: &str) -> anyhow::Result<ExportLine> {
    serde_json::from_str(line).with_context(|| {
        format!(
            "{} line {line_number} is not an export line",
            file.display()
        )
    })
}

async fn import_batch(
    events: &EventStore,
    tenant: &TenantId,
    batch: Vec<ExportLine>,
    imported_before: u64,
) -> anyhow::Result<plinth_events::ImportReport> {
    events.import(tenant, batch).await.map_err(|error| {
        anyhow::anyhow!("import stopped after {imported_before} new events: {error}")
    })
}

async fn replay(events: &EventStore, arguments: ReplayArguments) -> anyhow::Result<()> {
    let tenant = parse_tenant(&arguments.tenant)?;
    let stream = parse_stream(arguments.stream.as_deref())?;
    let mut sink = match &arguments.to_url {
        Some(url) => ReplaySink::http(url)?,
        None => ReplaySink::Stdout(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // A stream prefix narrows the read; the exact name is checked here.
    let filter = AllFilter {
        stream_prefix: stream.as_ref().map(|stream| stream.as_str().to_string()),
        event_types: Vec::new(),
    };
    let mut request = ReadAllRequest::forward(REPLAY_PAGE_SIZE)
        .from_position(arguments.from)
        .filter(filter);
    let mut replayed = 0u64;
    loop {
        let page = events
            .read_all(&tenant, &request)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        for event in &page.events {
            if stream
                .as_ref()
                .is_some_and(|stream| stream.as_str() != event.stream)
            {
                continue;
            }
            sink.deliver(event, replayed).await?;
            replayed += 1;
        }
        match page.next_position {
            Some(next) => request = request.from_position(next),
            None => break,
        }
    }
    sink.finish()?;
    eprintln!("replayed {replayed} events of tenant `{tenant}`");
    Ok(())
}

enum ReplaySink<'a> {
    Stdout(std::io::BufWriter<std::io::StdoutLock<'a>>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl ReplaySink<'_> {
    fn http(url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--to-url `{url}`"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--to-url `{url}` must be an http or https URL");
        }
        let client = reqwest::Client::builder()
            .timeout(REPLAY_REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(ReplaySink::Http {
            client,
            url: url.to_string(),
        })
    }

    async fn deliver(
        &mut self,
        event: &RecordedEvent,
        delivered_before: u64,
    ) -> anyhow::Result<()> {
        match self {
            ReplaySink::Stdout(output) => write_json_line(output, event),
            ReplaySink::Http { client, url } => {
                post_event(client, url, event, delivered_before).await
            }
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let ReplaySink::Stdout(output) = self {
            output.flush().context("cannot write to stdout")?;
        }
        Ok(())
    }
}

async fn post_event(
    client: &reqwest::Client,
    url: &str,
    event: &RecordedEvent,
    delivered_before: u64,
) -> anyhow::Result<()> {
    let stopped = || {
        format!(
            "replay stopped at position {} (stream `{}`, revision {}) after {delivered_before} events were delivered",
            event.position, event.stream, event.revision
        )
    };
    let response = client
        .post(url)
        .json(event)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))
        .with_context(stopped)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let quoted: String = body.chars().take(QUOTED_BODY_LIMIT).collect();
    bail!("{}: {url} answered {status}: {quoted}", stopped())
}
