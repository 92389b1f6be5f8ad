//! Traces leave the node over OTLP/HTTP when `telemetry.otlp_endpoint` is
//! set, and a request carrying a W3C `traceparent` is exported inside the
//! caller's trace. A tiny collector in this test records what arrives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CALLER_TRACE_ID_HEX: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct ReceivedExport {
    path: String,
    body: Vec<u8>,
}

/// Accepts connections until the test ends; answers 200 to everything and
/// forwards each request's path and body.
fn start_collector() -> (u16, mpsc::Receiver<ReceivedExport>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                return;
            };
            let sender = sender.clone();
            std::thread::spawn(move || serve_collector_connection(stream, sender));
        }
    });
    (port, receiver)
}

fn serve_collector_connection(stream: TcpStream, sender: mpsc::Sender<ReceivedExport>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut content_length = 0usize;
        loop {
            let mut header_line = String::new();
            if reader.read_line(&mut header_line).unwrap_or(0) == 0 {
                return;
            }
            let header_line = header_line.trim_end();
            if header_line.is_empty() {
                break;
            }
            if let Some((name, value)) = header_line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = sender.send(ReceivedExport { path, body });
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for index in (0..hex.len()).step_by(2) {
        bytes.push(u8::from_str_radix(&hex[index..index + 2], 16).unwrap());
    }
    bytes
}

fn contains_subsequence(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn requests_are_exported_as_spans_in_the_callers_trace() {
    let (collector_port, exports) = start_collector();
    let data_directory = tempfile::tempdir().unwrap();
    let node_port = free_port();
    let mut node = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{node_port}"))
        .arg("--data-dir")
        .arg(data_directory.path())
        .env(
            "PLINTH_TELEMETRY__OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector_port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let client = reqwest::blocking::Client::new();
    let health_url = format!("http://127.0.0.1:{node_port}/health/live");
    let started = Instant::now();
    while client.get(&health_url).send().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let traceparent = format!("00-{CALLER_TRACE_ID_HEX}-00f067aa0ba902b7-01");
    let response = client
        .get(format!("http://127.0.0.1:{node_port}/v1/whoami"))
        .header("traceparent", traceparent)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    // Shutdown flushes the batch of spans.
    let terminated = Command::new("kill")
        .arg("-TERM")
        .arg(node.id().to_string())
        .status()
        .unwrap();
    assert!(terminated.success());
    let exit = node.wait().unwrap();
    assert!(
        exit.success(),
        "the node should exit 0 after SIGTERM, got {exit:?}"
    );

    let caller_trace_id = hex_to_bytes(CALLER_TRACE_ID_HEX);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found_caller_trace = false;
    let mut export_paths = Vec::new();
    while Instant::now() < deadline && !found_caller_trace {
        let Ok(export) = exports.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        found_caller_trace = contains_subsequence(&export.body, &caller_trace_id);
        export_paths.push(export.path);
    }
    assert!(
        !export_paths.is_empty(),
        "no OTLP export reached the collector"
    );
    assert!(
        export_paths.iter().all(|path| path == "/v1/traces"),
        "{export_paths:?}"
    );
    assert!(
        found_caller_trace,
        "no exported span carried the caller's trace id"
    );
}
