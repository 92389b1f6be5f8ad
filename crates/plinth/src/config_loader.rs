//! Builds the effective configuration from, in rising precedence: the
//! built-in defaults, `plinth.toml` (or `--config FILE`), `PLINTH_...`
//! environment variables (`PLINTH_SERVER__LISTEN` sets `server.listen`:
//! sections are joined with a double underscore), and command-line flags.
//! An unknown key in any layer is an error naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use plinth_core::config::PlinthConfig;

const DEFAULT_CONFIG_FILE: &str = "plinth.toml";
/// Variables the test script exports for tests; they are not configuration.
const IGNORED_ENVIRONMENT_PREFIX: &str = "test_";
/// The credential `plinth cache load` reads; not node configuration.
const CLIENT_API_KEY_VARIABLE: &str = "api_key";

#[derive(Debug, Default)]
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub log_level: Option<String>,
}

pub fn load(sources: &ConfigSources) -> Result<PlinthConfig, String> {
    let mut figment = Figment::from(Serialized::defaults(PlinthConfig::default()));
    match &sources.file {
        Some(path) => {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None => {
            if Path::new(DEFAULT_CONFIG_FILE).exists() {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
        }
    }
    figment = figment.merge(
        Env::prefixed("PLINTH_")
            .filter(|key| {
                let name = key.as_str().to_ascii_lowercase();
                !name.starts_with(IGNORED_ENVIRONMENT_PREFIX) && name != CLIENT_API_KEY_VARIABLE
            })
            .split("__"),
    );
    if let Some(data_dir) = &sources.data_dir {
        figment = figment.merge(Serialized::default("data_dir", data_dir));
    }
    if let Some(listen) = &sources.listen {
        figment = figment.merge(Serialized::default("server.listen", listen.to_string()));
    }
    if let Some(log_level) = &sources.log_level {
        figment = figment.merge(Serialized::default("log.level", log_level));
    }
    figment
        .extract::<PlinthConfig>()
        .map_err(|error| describe_figment_error(&error))
}

fn describe_figment_error(error: &figment::Error) -> String {
    let mut lines = Vec::new();
    for single in error.clone() {
        let mut line = format!("invalid configuration: {}", single.kind);
        if !single.path.is_empty() {
            line.push_str(&format!(" (key `{}`)", single.path.join(".")));
        }
        if let Some(metadata) = &single.metadata {
            line.push_str(&format!(" in {}", metadata.name));
            if let Some(source) = &metadata.source {
                line.push_str(&format!(" {source}"));
            }
        }
        lines.push(line);
    }
    lines.join("\n")
}

pub fn print(config: &PlinthConfig) -> ExitCode {
    match toml::to_string_pretty(config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("plinth: cannot print the configuration: {error}");
            ExitCode::FAILURE
        }
    }
}
