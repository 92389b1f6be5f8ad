//! `plinth cache load`: loads keys from a JSON-lines file into a keyspace of
//! a running node through `POST /v1/keyspaces/{keyspace}/bulk-put`, so every
//! write takes the path any client's write takes (the authoritative tier
//! first, then the copies, with other nodes' L1 kept coherent).
//!
//! The file is streamed: at most one batch (`--batch` lines, and
//! `--max-batch-bytes`) is held in memory. A line that is not a JSON object
//! of the expected shape is reported with its number and skipped. The node
//! refuses a whole batch for one bad item, so a refused batch is sent again
//! line by line: only the lines at fault are rejected, each reported with the
//! node's problem detail. The command exits with 1 when any line was
//! rejected.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use plinth_core::ResourceName;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How often progress is printed at most.
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);
/// How long one bulk-put request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a response that is not a problem document is quoted.
const QUOTED_BODY_LIMIT: usize = 200;

#[derive(Debug, Args)]
pub struct CacheLoadArguments {
    /// A JSON-lines file: one object per line, `{"key": "k", "value": "text"}`
    /// or `{"key": "k", "value_base64": "..."}`, each optionally with
    /// `"content_type"`, `"ttl": "30s"` and `"tags": ["a"]`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The keyspace to write to; a first write creates it with the node's
    /// default keyspace configuration.
    #[arg(long, value_name = "NAME")]
    pub keyspace: String,
    /// The node's base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// An API key (or JWT) with `cache:write:<keyspace>`; a node in auth dev
    /// mode needs none.
    #[arg(
        long,
        value_name = "KEY",
        env = "PLINTH_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Lines per bulk-put request, 1 to 1000.
    #[arg(long, value_name = "LINES", default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,
    /// Bytes of lines per request at most (a longer line goes alone); keep it
    /// below the node's `server.max_body_bytes`.
    #[arg(long, value_name = "BYTES", default_value_t = 512 * 1024)]
    pub max_batch_bytes: usize,
}

/// One line of the file: a bulk-put item.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LoadItem {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
}

/// A parsed line waiting in the current batch.
struct PendingLine {
    number: u64,
    item: LoadItem,
}

#[derive(Serialize)]
struct BulkPutBody<'a> {
    items: Vec<&'a LoadItem>,
}

/// Counts, and what is printed about them.
struct LoadProgress {
    read: u64,
    written: u64,
    rejected: u64,
    last_printed: Instant,
}

impl LoadProgress {
    fn new() -> Self {
        LoadProgress {
            read: 0,
            written: 0,
            rejected: 0,
            last_printed: Instant::now(),
        }
    }

    fn reject(&mut self, line_number: u64, reason: &str) {
        self.rejected += 1;
        eprintln!("line {line_number}: rejected: {reason}");
    }

    fn print_if_due(&mut self) {
        if self.last_printed.elapsed() < PROGRESS_PERIOD {
            return;
        }
        self.last_printed = Instant::now();
        println!(
            "{} lines read, {} written, {} rejected",
            self.read, self.written, self.rejected
        );
    }

    fn print_summary(&self, file: &Path, keyspace: &str) {
        println!(
            "{}: {} lines read, {} written to keyspace `{keyspace}`, {} rejected",
            file.display(),
            self.read,
            self.written,
            self.rejected
        );
    }
}

pub async fn run(arguments: CacheLoadArguments) -> anyhow::Result<()> {
    ResourceName::parse("keyspace", &arguments.keyspace)
        .map_err(|error| anyhow::anyhow!("--keyspace: {}", error.detail()))?;
    let client = BulkPutClient::new(&arguments)?;
    let mut progress = LoadProgress::new();
    let outcome = load_file(&arguments, &client, &mut progress).await;
    progress.print_summary(&arguments.file, &arguments.keyspace);
    outcome?;
    if progress.rejected > 0 {
        bail!(
            "{} of {} lines were rejected",
            progress.rejected,
            progress.read
        );
    }
    Ok(())
}

async fn load_file(
    arguments: &CacheLoadArguments,
    client: &BulkPutClient,
    progress: &mut LoadProgress,
) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&arguments.file)
        .await
        .with_context(|| format!("cannot open {}", arguments.file.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut batch: Vec<PendingLine> = Vec::new();
    let mut batch_bytes = 0;
    loop {
        line.clear();
        let length = reader
            .read_until(b'\n', &mut line)
            .await
            .with_context(|| format!("cannot read {}", arguments.file.display()))?;
        if length == 0 {
            break;
        }
        progress.read += 1;
        let line_number = progress.read;
        let item = match parse_line(&line) {
            Ok(Some(item)) => item,
            Ok(None) => continue,
            Err(reason) => {
                progress.reject(line_number, &reason);
                continue;
            }
        };
        let batch_is_full = batch.len() >= usize::from(arguments.batch)
            || batch_bytes + length > arguments.max_batch_bytes;
        if !batch.is_empty() && batch_is_full {
            send_batch(client, std::mem::take(&mut batch), progress).await?;
            batch_bytes = 0;
            progress.print_if_due();
        }
        batch.push(PendingLine {
            number: line_number,
            item,
        });
        batch_bytes += length;
    }
    if !batch.is_empty() {
        send_batch(client, batch, progress).await?;
    }
    Ok(())
}

/// The item on a line; `None` for a blank line; `Err` says what is wrong.
fn parse_line(line: &[u8]) -> Result<Option<LoadItem>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let item: LoadItem =
        serde_json::from_slice(line).map_err(|error| format!("not a valid item: {error}"))?;
    if item.value.is_some() == item.value_base64.is_some() {
        return Err("give exactly one of value or value_base64".to_string());
    }
    Ok(Some(item))
}

async fn send_batch(
    client: &BulkPutClient,
    batch: Vec<PendingLine>,
    progress: &mut LoadProgress,
) -> anyhow::Result<()> {
    let problem = match client.put(&batch).await? {
        BatchOutcome::Written => {
            progress.written += batch.len() as u64;
            return Ok(());
        }
        BatchOutcome::Refused(problem) => problem,
    };
    if let [single] = batch.as_slice() {
        progress.reject(single.number, &problem);
        return Ok(());
    }
    for pending in &batch {
        match client.put(std::slice::from_ref(pending)).await? {
            BatchOutcome::Written => progress.written += 1,
            BatchOutcome::Refused(problem) => progress.reject(pending.number, &problem),
        }
    }
    Ok(())
}

enum BatchOutcome {
    Written,
    /// The node refused the batch for its content; its problem, described.
    Refused(String),
}

struct BulkPutClient {
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
}

impl BulkPutClient {
    fn new(arguments: &CacheLoadArguments) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(BulkPutClient {
            http,
            endpoint: format!(
                "{}/v1/keyspaces/{}/bulk-put",
                arguments.url.trim_end_matches('/'),
                arguments.keyspace
            ),
            api_key: arguments.api_key.clone(),
        })
    }

    /// Sends the lines as one bulk-put. A refusal because of what the lines
    /// hold is a [`BatchOutcome::Refused`]; anything else (unreachable node,
    /// bad credential, outage) ends the load.
    async fn put(&self, lines: &[PendingLine]) -> anyhow::Result<BatchOutcome> {
        let body = BulkPutBody {
            items: lines.iter().map(|pending| &pending.item).collect(),
        };
        let mut request = self.http.post(&self.endpoint).json(&body);
        if let Some(api_key) = &self.api_key {
            request = request.bearer_auth(api_key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.endpoint))?;
        let status = response.status();
        if status.is_success() {
            return Ok(BatchOutcome::Written);
        }
        let problem = describe_problem(status, &response.text().await.unwrap_or_default());
        if is_refusal_of_content(status) {
            return Ok(BatchOutcome::Refused(problem));
        }
        bail!("the node stopped the load: {problem}")
    }
}

fn is_refusal_of_content(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::CONFLICT
            | StatusCode::PRECONDITION_FAILED
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// `413 value_too_large: the value is ...` from a problem document, else
/// the status and the start of the body.
fn describe_problem(status: StatusCode, body: &str) -> String {
    let document: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if let (Some(code), Some(detail)) = (document["code"].as_str(), document["detail"].as_str()) {
        return format!("{} {code}: {detail}", status.as_u16());
    }
    let quoted: String = body.chars().take(QUOTED_BODY_LIMIT).collect();
    format!("{status}: {quoted}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_items_or_say_what_is_wrong() {
        let text = parse_line(br#"{"key": "a", "value": "x"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(text.value.as_deref(), Some("x"));
        let bytes = parse_line(
            br#"{"key": "b", "value_base64": "AAE=", "content_type": "application/x", "ttl": "1m", "tags": ["t"]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(bytes.tags, vec!["t".to_string()]);
        assert!(parse_line(b"   \n").unwrap().is_none());
        for bad in [
            &b"{not json"[..],
            br#"{"value": "no key"}"#,
            br#"{"key": "a"}"#,
            br#"{"key": "a", "value": "x", "value_base64": "eA=="}"#,
            br#"{"key": "a", "value": "x", "colour": "red"}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn problems_are_described_by_code_and_detail() {
        let body =
            r#"{"code": "invalid_key", "detail": "a key may not contain spaces", "status": 400}"#;
        assert_eq!(
            describe_problem(StatusCode::BAD_REQUEST, body),
            "400 invalid_key: a key may not contain spaces"
        );
        assert_eq!(
            describe_problem(StatusCode::BAD_GATEWAY, "upstream down"),
            "502 Bad Gateway: upstream down"
        );
    }
}
