//! Keeps `plinth.example.toml` and `docs/METRICS.md` true: the example must
//! parse, must show every key the server reads with its default value, and
//! the metrics document must list every metric the code publishes.

use std::collections::BTreeSet;
use std::path::Path;

use plinth_core::config::PlinthConfig;

fn repository_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// Every key path (`server.listen`, `auth.jwt.issuer`, ...) in a TOML table.
fn key_paths(table: &toml::Table, prefix: &str, paths: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => key_paths(inner, &path, paths),
            _ => {
                paths.insert(path);
            }
        }
    }
}

/// Keys written as comments (`# key = value`) count as documented.
fn uncommented(text: &str) -> String {
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let commented_assignment = trimmed.strip_prefix("# ").filter(|rest| {
            rest.split_once(" = ")
                .is_some_and(|(key, _)| !key.contains(' '))
        });
        match commented_assignment {
            Some(assignment) => lines.push(assignment.to_string()),
            None => lines.push(line.to_string()),
        }
    }
    lines.join("\n")
}

#[test]
fn the_example_config_parses_and_matches_the_defaults() {
    let example_text = repository_file("plinth.example.toml");
    let parsed: PlinthConfig = toml::from_str(&example_text).expect("the example parses");
    let defaults = PlinthConfig::default();
    let parsed_again = toml::to_string(&parsed).unwrap();
    let default_text = toml::to_string(&defaults).unwrap();
    assert_eq!(
        parsed_again, default_text,
        "the example's active values must be the defaults"
    );
}

#[test]
fn the_example_config_shows_every_key() {
    let documented_text = uncommented(&repository_file("plinth.example.toml"));
    let documented: toml::Table =
        toml::from_str(&documented_text).expect("the example with its commented keys parses");
    let mut documented_paths = BTreeSet::new();
    key_paths(&documented, "", &mut documented_paths);

    let mut every_key = PlinthConfig::default();
    let secret = plinth_core::Secret::new("x".repeat(24));
    every_key.storage.url = Some(secret.clone());
    every_key.redis.url = Some(secret.clone());
    every_key.auth.bootstrap_admin_key = Some(secret.clone());
    every_key.auth.bootstrap_admin_key_file = Some("/k".into());
    every_key.auth.jwt.hs256_secret = Some(secret);
    every_key.auth.jwt.jwks_file = Some("/j".into());
    every_key.auth.jwt.issuer = Some("i".into());
    every_key.auth.jwt.audience = Some("a".into());
    every_key.telemetry.otlp_endpoint = Some("http://x".into());
    every_key.server.cors.max_age = Some(plinth_core::HumanDuration::from_secs(1));
    let all: toml::Table = toml::from_str(&toml::to_string(&every_key).unwrap()).unwrap();
    let mut all_paths = BTreeSet::new();
    key_paths(&all, "", &mut all_paths);

    let missing: Vec<&String> = all_paths.difference(&documented_paths).collect();
    assert!(
        missing.is_empty(),
        "plinth.example.toml does not document {missing:?}"
    );
}

#[test]
fn the_metrics_document_lists_every_metric() {
    let document = repository_file("docs/METRICS.md");
    for (name, _, _, _) in plinth_server::METRICS_DOCUMENTATION {
        assert!(
            document.contains(&format!("`{name}`")),
            "docs/METRICS.md does not mention `{name}`"
        );
    }
}
