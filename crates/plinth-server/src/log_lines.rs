//! The log output: one line per event, JSON or readable text, written by a
//! dedicated thread so a request never waits on stderr.
//!
//! Every line written while a request is served carries the request's
//! context (`request_id`, `method`, `route`, `trace_id`) under `span`, read
//! from the request's task-local context rather than from tracing span
//! fields. That keeps log correlation free of per-request span bookkeeping:
//! request spans exist only when a trace exporter wants them.
//!
//! The access log (one `request served` line per request) does not go
//! through `tracing` at all: the edge hands the request's fields to
//! [`log_request_served`], which formats the line directly. Dispatching an
//! event through the subscriber, its per-layer filters and the field
//! visitors cost more than writing the line. The line reads exactly as if
//! it had been logged with `tracing::info!` from [`ACCESS_LOG_TARGET`].
//!
//! Lines go through a bounded queue of [`QUEUED_LINES_LIMIT`] lines. When a
//! flood fills it, new lines are dropped and counted in
//! `plinth_log_lines_dropped_total` rather than slowing requests down.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;

use crate::middleware::request_context::{RequestContext, with_current_request};

/// Lines that may wait for the writer thread before new ones are dropped.
pub const QUEUED_LINES_LIMIT: usize = 65_536;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// How long lines may wait while the node logs steadily: short enough to
/// read a live log, long enough that the thread wakes only ten times a
/// second. On a virtual machine a wake costs about what writing several
/// hundred lines costs (measured in BENCHMARKS.md, HTTP section), and at
/// 50,000 lines a second a batch still fills under a tenth of the queue.
const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Fields `tracing-log` adds to events bridged from the `log` crate.
const LOG_CRATE_FIELD_PREFIX: &str = "log.";
/// Enough for a typical line, so formatting it rarely grows the string.
const LINE_CAPACITY: usize = 512;

/// The target access lines are logged under, as if the edge middleware
/// logged them: `log.level` directives such as
/// `info,plinth_server::middleware::edge=warn` apply to them.
pub const ACCESS_LOG_TARGET: &str = "plinth_server::middleware::edge";

/// Where access lines go, once [`AccessLog::install`] ran.
static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLineFormat {
    Json,
    Text,
}

/// The tracing layer that formats events. Spans are not its business: pair
/// it with a filter that lets only events through.
pub struct LogLineLayer {
    format: LogLineFormat,
    queue: SyncSender<WriterMessage>,
}

/// Waits for queued lines to reach stderr; call before the process exits.
pub struct LogLineFlusher {
    queue: SyncSender<WriterMessage>,
}

/// The access log, feeding the same writer as a [`LogLineLayer`].
pub struct AccessLog {
    format: LogLineFormat,
    queue: SyncSender<WriterMessage>,
}

enum WriterMessage {
    Line(String),
    Flush(SyncSender<()>),
}

/// Starts the writer thread and returns the layer feeding it.
pub fn log_line_layer(format: LogLineFormat) -> std::io::Result<(LogLineLayer, LogLineFlusher)> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUED_LINES_LIMIT);
    std::thread::Builder::new()
        .name("plinth-log-writer".to_string())
        .spawn(move || write_lines_until_closed(receiver, std::io::stderr()))?;
    let layer = LogLineLayer {
        format,
        queue: sender.clone(),
    };
    Ok((layer, LogLineFlusher { queue: sender }))
}

impl LogLineLayer {
    /// The access log writing to this layer's output. It is off until
    /// installed.
    pub fn access_log(&self) -> AccessLog {
        AccessLog {
            format: self.format,
            queue: self.queue.clone(),
        }
    }
}

impl AccessLog {
    /// Turns the access log on for the rest of the process. The log level
    /// is not consulted per request, so install it only when the level
    /// lets `info` lines of [`ACCESS_LOG_TARGET`] through. A second install
    /// is ignored.
    pub fn install(self) {
        let _ = ACCESS_LOG.set(self);
    }
}

/// Writes the access line of a request that was answered with `status`
/// after `latency`; nothing when the access log is off.
pub fn log_request_served(request: &RequestContext, status: u16, latency: Duration) {
    let Some(access_log) = ACCESS_LOG.get() else {
        return;
    };
    let latency_us = latency.as_micros() as u64;
    let line = match access_log.format {
        LogLineFormat::Json => json_access_line(request, status, latency_us),
        LogLineFormat::Text => text_access_line(request, status, latency_us),
    };
    queue_line(&access_log.queue, line);
}

/// Queues a line for the writer thread, or counts it as dropped when the
/// queue is full.
fn queue_line(queue: &SyncSender<WriterMessage>, line: String) {
    match queue.try_send(WriterMessage::Line(line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            metrics::counter!("plinth_log_lines_dropped_total").increment(1);
        }
        Err(TrySendError::Disconnected(WriterMessage::Line(line))) => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        Err(TrySendError::Disconnected(WriterMessage::Flush(_))) => {}
    }
}

impl LogLineFlusher {
    /// Blocks until every line queued before the call is written, or the
    /// timeout passes.
    pub fn flush(&self, timeout: Duration) {
        let (acknowledge, acknowledged) = std::sync::mpsc::sync_channel(1);
        if self.queue.send(WriterMessage::Flush(acknowledge)).is_err() {
            return;
        }
        let _ = acknowledged.recv_timeout(timeout);
    }
}

/// Writes lines in batches. The first line after a quiet spell wakes the
/// thread; from then on it sleeps [`BATCH_INTERVAL`] after every batch and
/// takes what came meanwhile, until a batch finds the queue empty. So a
/// sender wakes it once per quiet spell, never per line: waking it is a
/// futex call on the path of the request that logs, and when it went back
/// to waiting after every batch of one line, a node serving one request at
/// a time paid that call on about every request.
fn write_lines_until_closed(receiver: Receiver<WriterMessage>, destination: impl std::io::Write) {
    let mut output = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, destination);
    let mut pending_acknowledgements = Vec::new();
    while let Ok(first_message) = receiver.recv() {
        let mut next_message = Some(first_message);
        while next_message.is_some() {
            while let Some(message) = next_message {
                match message {
                    WriterMessage::Line(line) => {
                        let _ = output.write_all(line.as_bytes());
                    }
                    WriterMessage::Flush(acknowledge) => pending_acknowledgements.push(acknowledge),
                }
                next_message = receiver.try_recv().ok();
            }
            let _ = output.flush();
            for acknowledge in pending_acknowledgements.drain(..) {
                let _ = acknowledge.send(());
            }
            std::thread::sleep(BATCH_INTERVAL);
            next_message = receiver.try_recv().ok();
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for LogLineLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let line = match self.format {
            LogLineFormat::Json => json_line(event),
            LogLineFormat::Text => text_line(event),
        };
        queue_line(&self.queue, line);
    }
}

fn json_line(event: &Event<'_>) -> String {
    let mut line = String::with_capacity(LINE_CAPACITY);
    line.push_str("{\"timestamp\":\"");
    write_timestamp(&mut line);
    line.push_str("\",\"level\":\"");
    line.push_str(event.metadata().level().as_str());
    line.push_str("\",\"fields\":{");
    let mut fields = JsonFields {
        line: &mut line,
        written: 0,
        bridged_target: None,
    };
    event.record(&mut fields);
    let target = fields
        .bridged_target
        .take()
        .unwrap_or_else(|| event.metadata().target().to_string());
    line.push_str("},\"target\":");
    write_json_string(&mut line, &target);
    with_current_request(|request| {
        line.push_str(",\"span\":");
        write_request_json(&mut line, request);
    });
    line.push_str("}\n");
    line
}

/// The access line as [`json_line`] would write the event
/// `info!(status, latency_us, "request served")`.
fn json_access_line(request: &RequestContext, status: u16, latency_us: u64) -> String {
    let mut line = String::with_capacity(LINE_CAPACITY);
    line.push_str("{\"timestamp\":\"");
    write_timestamp(&mut line);
    line.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request served\",\"status\":");
    let _ = write!(line, "{status},\"latency_us\":{latency_us}");
    line.push_str("},\"target\":");
    write_json_string(&mut line, ACCESS_LOG_TARGET);
    line.push_str(",\"span\":");
    write_request_json(&mut line, request);
    line.push_str("}\n");
    line
}

fn write_request_json(line: &mut String, request: &RequestContext) {
    line.push_str("{\"request_id\":");
    write_json_string(line, &request.request_id);
    line.push_str(",\"method\":");
    write_json_string(line, request.method.as_str());
    line.push_str(",\"route\":");
    write_json_string(line, request.route_template());
    if let Some(trace_id) = &request.trace_id {
        line.push_str(",\"trace_id\":");
        write_json_string(line, trace_id);
    }
    line.push('}');
}

fn text_line(event: &Event<'_>) -> String {
    let mut line = String::with_capacity(LINE_CAPACITY);
    write_timestamp(&mut line);
    let _ = write!(line, " {:>5} ", event.metadata().level().as_str());
    let mut fields = TextFields {
        message: String::new(),
        others: String::new(),
        bridged_target: None,
    };
    event.record(&mut fields);
    let target = fields
        .bridged_target
        .as_deref()
        .unwrap_or(event.metadata().target());
    let _ = write!(line, "{target}: {}{}", fields.message, fields.others);
    with_current_request(|request| write_request_text(&mut line, request));
    line.push('\n');
    line
}

/// The access line as [`text_line`] would write the event
/// `info!(status, latency_us, "request served")`.
fn text_access_line(request: &RequestContext, status: u16, latency_us: u64) -> String {
    let mut line = String::with_capacity(LINE_CAPACITY);
    write_timestamp(&mut line);
    let _ = write!(
        line,
        "  INFO {ACCESS_LOG_TARGET}: request served status={status} latency_us={latency_us}"
    );
    write_request_text(&mut line, request);
    line.push('\n');
    line
}

fn write_request_text(line: &mut String, request: &RequestContext) {
    let _ = write!(
        line,
        " request_id={} method={} route={}",
        request.request_id,
        request.method,
        request.route_template()
    );
    if let Some(trace_id) = &request.trace_id {
        let _ = write!(line, " trace_id={trace_id}");
    }
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T14:03:07.120931Z`.
/// Only the microseconds change from line to line: each thread keeps the
/// rest formatted for the current second.
fn write_timestamp(line: &mut String) {
    thread_local! {
        static FORMATTED_SECOND: RefCell<FormattedSecond> = const {
            RefCell::new(FormattedSecond { unix_second: -1, text: String::new() })
        };
    }
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let unix_second = since_epoch.as_secs() as i64;
    FORMATTED_SECOND.with_borrow_mut(|formatted_second| {
        if formatted_second.unix_second != unix_second {
            formatted_second.format(unix_second);
        }
        line.push_str(&formatted_second.text);
    });
    let _ = write!(line, ".{:06}Z", since_epoch.subsec_micros());
}

/// `2026-11-22T14:03:07`, the part of a timestamp that holds for a second.
struct FormattedSecond {
    unix_second: i64,
    text: String,
}

impl FormattedSecond {
    fn format(&mut self, unix_second: i64) {
        let time =
            OffsetDateTime::from_unix_timestamp(unix_second).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        self.unix_second = unix_second;
        self.text.clear();
        let _ = write!(
            self.text,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            time.year(),
            u8::from(time.month()),
            time.day(),
            time.hour(),
            time.minute(),
            time.second()
        );
    }
}

/// Writes `value` as a JSON string literal.
fn write_json_string(line: &mut String, value: &str) {
    line.push('"');
    let _ = JsonEscaped(line).write_str(value);
    line.push('"');
}

/// A `fmt::Write` that escapes what goes through it for the inside of a
/// JSON string, so `Debug` and `Display` values need no temporary string.
struct JsonEscaped<'a>(&'a mut String);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        // Most text needs no escaping: copy runs of plain characters whole.
        // Every character that does is ASCII, and no byte of a multi-byte
        // UTF-8 character is, so scanning bytes finds them without decoding.
        let mut plain_run_start = 0;
        for (index, byte) in text.bytes().enumerate() {
            let short_escape = match byte {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                control if control < 0x20 => None,
                _ => continue,
            };
            self.0.push_str(&text[plain_run_start..index]);
            match short_escape {
                Some(escape) => self.0.push_str(escape),
                None => {
                    let _ = write!(self.0, "\\u{:04x}", byte);
                }
            }
            plain_run_start = index + 1;
        }
        self.0.push_str(&text[plain_run_start..]);
        Ok(())
    }
}

/// Writes an event's fields as the members of a JSON object.
struct JsonFields<'a> {
    line: &'a mut String,
    written: usize,
    bridged_target: Option<String>,
}

impl JsonFields<'_> {
    /// Starts a member; false for the `log` crate's bookkeeping fields.
    fn begin(&mut self, field: &Field) -> bool {
        if field.name().starts_with(LOG_CRATE_FIELD_PREFIX) {
            return false;
        }
        if self.written > 0 {
            self.line.push(',');
        }
        self.written += 1;
        write_json_string(self.line, field.name());
        self.line.push(':');
        true
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.bridged_target = Some(value.to_string());
        }
        if self.begin(field) {
            write_json_string(self.line, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.begin(field) {
            self.line.push('"');
            let _ = write!(JsonEscaped(self.line), "{value:?}");
            self.line.push('"');
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.begin(field) {
            self.line.push('"');
            let _ = write!(JsonEscaped(self.line), "{value}");
            self.line.push('"');
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.begin(field) {
            let _ = write!(self.line, "{value}");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.begin(field) {
            let _ = write!(self.line, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.begin(field) {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !self.begin(field) {
            return;
        }
        // JSON has no NaN or infinity.
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            let _ = write!(self.line, "\"{value}\"");
        }
    }
}

/// Collects an event's message and `key=value` pairs for a text line.
struct TextFields {
    message: String,
    others: String,
    bridged_target: Option<String>,
}

impl Visit for TextFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.bridged_target = Some(value.to_string());
            return;
        }
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if name.starts_with(LOG_CRATE_FIELD_PREFIX) {
            return;
        }
        if name == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        let _ = write!(self.others, " {name}={value:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut line = String::new();
        write_json_string(&mut line, "say \"hi\"\\\n\u{1}é");
        assert_eq!(line, "\"say \\\"hi\\\"\\\\\\n\\u0001é\"");
        let parsed: String = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, "say \"hi\"\\\n\u{1}é");
    }

    #[tokio::test]
    async fn access_lines_read_as_the_tracing_event_would() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let request = RequestContext {
            request_id: "request-1".to_string(),
            method: axum::http::Method::GET,
            route: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string()),
        };
        for format in [LogLineFormat::Json, LogLineFormat::Text] {
            let (sender, receiver) = std::sync::mpsc::sync_channel(4);
            let layer = LogLineLayer {
                format,
                queue: sender.clone(),
            };
            let subscriber = tracing_subscriber::registry().with(layer);
            let access_log = AccessLog {
                format,
                queue: sender,
            };
            std::sync::Arc::new(request.clone())
                .scope_future(async {
                    tracing::subscriber::with_default(subscriber, || {
                        tracing::info!(
                            target: ACCESS_LOG_TARGET,
                            status = 200_u16,
                            latency_us = 61_u64,
                            "request served"
                        );
                    });
                    let direct_line = match access_log.format {
                        LogLineFormat::Json => json_access_line(&request, 200, 61),
                        LogLineFormat::Text => text_access_line(&request, 200, 61),
                    };
                    queue_line(&access_log.queue, direct_line);
                })
                .await;
            let timestamp_start = match format {
                LogLineFormat::Json => "{\"timestamp\":\"".len(),
                LogLineFormat::Text => 0,
            };
            let through_tracing = without_timestamp(&receive_line(&receiver), timestamp_start);
            let direct = without_timestamp(&receive_line(&receiver), timestamp_start);
            assert_eq!(direct, through_tracing);
        }
    }

    fn receive_line(receiver: &Receiver<WriterMessage>) -> String {
        match receiver.try_recv() {
            Ok(WriterMessage::Line(line)) => line,
            _ => panic!("no line was queued"),
        }
    }

    /// The line with its timestamp, checked for shape, replaced by `<timestamp>`.
    fn without_timestamp(line: &str, timestamp_start: usize) -> String {
        const TIMESTAMP_LENGTH: usize = "2026-11-22T14:03:07.120931Z".len();
        let timestamp = &line[timestamp_start..timestamp_start + TIMESTAMP_LENGTH];
        let separators: Vec<(usize, char)> = timestamp
            .char_indices()
            .filter(|(_, character)| !character.is_ascii_digit())
            .collect();
        assert_eq!(
            separators,
            [
                (4, '-'),
                (7, '-'),
                (10, 'T'),
                (13, ':'),
                (16, ':'),
                (19, '.'),
                (26, 'Z')
            ],
            "{line}"
        );
        line.replacen(timestamp, "<timestamp>", 1)
    }

    #[test]
    fn the_writer_thread_writes_every_line_before_acknowledging_a_flush() {
        let (sender, receiver) = std::sync::mpsc::sync_channel(16);
        let (output_sender, output_receiver) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let mut output = Vec::new();
            write_lines_until_closed(receiver, &mut output);
            output_sender.send(output).unwrap();
        });
        sender
            .send(WriterMessage::Line("first\n".to_string()))
            .unwrap();
        sender
            .send(WriterMessage::Line("second\n".to_string()))
            .unwrap();
        let flusher = LogLineFlusher {
            queue: sender.clone(),
        };
        flusher.flush(Duration::from_secs(5));
        drop(flusher);
        drop(sender);
        writer.join().unwrap();
        let output = output_receiver.recv().unwrap();
        assert_eq!(String::from_utf8(output).unwrap(), "first\nsecond\n");
    }

    #[test]
    fn the_writer_thread_writes_lines_in_order_whether_they_come_in_bursts_or_apart() {
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUED_LINES_LIMIT);
        let (output_sender, output_receiver) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let mut output = Vec::new();
            write_lines_until_closed(receiver, &mut output);
            output_sender.send(output).unwrap();
        });
        let flusher = LogLineFlusher {
            queue: sender.clone(),
        };
        let mut expected = String::new();
        let mut send_line = |line: String| {
            expected.push_str(&line);
            sender.send(WriterMessage::Line(line)).unwrap();
        };

        send_line("alone\n".to_string());
        // Longer than a batch interval: the writer finds the queue empty and
        // waits on it again, so the next line has to wake it.
        std::thread::sleep(BATCH_INTERVAL * 3);
        for index in 0..1000 {
            send_line(format!("burst {index}\n"));
        }
        flusher.flush(Duration::from_secs(5));
        std::thread::sleep(BATCH_INTERVAL * 3);
        send_line("after the burst\n".to_string());
        flusher.flush(Duration::from_secs(5));
        drop(flusher);
        drop(sender);
        writer.join().unwrap();

        let output = output_receiver.recv().unwrap();
        assert_eq!(String::from_utf8(output).unwrap(), expected);
    }
}
