//! The configuration of a Plinth node, as read from `plinth.toml`,
//! `PLINTH_...` environment variables and command-line flags (the binary
//! does the layering; this module only defines the shape and defaults).
//!
//! Every struct denies unknown fields, so a typo in a key is an error that
//! names the key instead of a setting silently ignored. Secrets are
//! [`Secret`]s, so printing the effective configuration redacts them.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::resilience::BreakerConfig;
use crate::{HumanDuration, Secret};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlinthConfig {
    /// Where embedded state (the SQLite database) lives.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub redis: RedisConfig,
    pub engines: EnginesConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub health: HealthConfig,
    pub idempotency: IdempotencyConfig,
}

impl Default for PlinthConfig {
    fn default() -> Self {
        PlinthConfig {
            data_dir: PathBuf::from("./plinth-data"),
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            redis: RedisConfig::default(),
            engines: EnginesConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            health: HealthConfig::default(),
            idempotency: IdempotencyConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Longest time a request may take before it is answered with 504.
    pub request_timeout: HumanDuration,
    /// How long in-flight requests may drain after SIGTERM/SIGINT.
    pub shutdown_timeout: HumanDuration,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Compress responses when the client accepts it.
    pub compression: bool,
    pub cors: CorsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            request_timeout: HumanDuration::from_secs(30),
            shutdown_timeout: HumanDuration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            compression: true,
            cors: CorsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser. Empty disables CORS;
    /// `["*"]` allows any origin (without credentials).
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<HumanDuration>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` or `postgres://...`. Unset means SQLite at
    /// `<data_dir>/plinth.db`.
    pub url: Option<Secret<String>>,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// Connections serving reads (writes all go through one writer thread).
    pub readers: usize,
    /// How long a connection waits on a lock before giving up.
    pub busy_timeout: HumanDuration,
    /// Most write jobs committed together in one transaction (group commit).
    pub max_batch: usize,
    /// Write jobs that may wait for the writer; beyond it writers wait.
    pub queue_capacity: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            readers: 4,
            busy_timeout: HumanDuration::from_secs(5),
            max_batch: 256,
            queue_capacity: 4096,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    pub pool_min_size: usize,
    pub pool_max_size: usize,
    /// How long a caller waits for a free connection.
    pub acquire_timeout: HumanDuration,
    /// Connections older than this are closed and replaced.
    pub max_lifetime: HumanDuration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            pool_min_size: 2,
            pool_max_size: 16,
            acquire_timeout: HumanDuration::from_secs(5),
            max_lifetime: HumanDuration::from_secs(30 * 60),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`. Unset means no Redis.
    pub url: Option<Secret<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnginesConfig {
    /// Longest time one call to an engine may take.
    pub call_timeout: HumanDuration,
    /// Breaker settings shared by every engine connection.
    pub breaker: BreakerConfig,
}

impl Default for EnginesConfig {
    fn default() -> Self {
        EnginesConfig {
            call_timeout: HumanDuration::from_secs(5),
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Requests without credentials act as tenant `default` with every
    /// scope. Refuses to listen on anything but loopback.
    Dev,
    /// Every request under `/v1` needs a valid credential.
    Enforced,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// An API key with the `admin` scope, accepted on top of stored keys.
    /// Use it to create the first real keys, then remove it.
    pub bootstrap_admin_key: Option<Secret<String>>,
    /// Same, read from a file (first line), for secret managers.
    pub bootstrap_admin_key_file: Option<PathBuf>,
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Dev,
            bootstrap_admin_key: None,
            bootstrap_admin_key_file: None,
            jwt: JwtConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<Secret<String>>,
    /// PEM files with RSA public keys for RS256 tokens.
    pub rs256_public_key_files: Vec<PathBuf>,
    /// A JWKS document (JSON file) with RSA public keys, matched by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Claim holding the tenant id.
    pub tenant_claim: String,
    /// Claim holding the scopes (a space-separated string or an array).
    pub scopes_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: HumanDuration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            rs256_public_key_files: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            tenant_claim: "tenant".to_string(),
            scopes_claim: "scope".to_string(),
            leeway: HumanDuration::from_secs(30),
        }
    }
}

impl JwtConfig {
    pub fn is_configured(&self) -> bool {
        self.hs256_secret.is_some()
            || !self.rs256_public_key_files.is_empty()
            || self.jwks_file.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `plinth_server=debug,info`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint (`http://collector:4318`); unset disables traces.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Fraction of root traces sampled, 0.0 to 1.0.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "plinth".to_string(),
            sample_ratio: 1.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How long a health result is reused, so probes cannot hammer engines.
    pub cache_ttl: HumanDuration,
    /// How many past checks per dependency `GET /health` shows.
    pub history: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            cache_ttl: HumanDuration::from_secs(1),
            history: 10,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long a stored response answers a repeated `Idempotency-Key`.
    pub ttl: HumanDuration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            ttl: HumanDuration::from_secs(24 * 60 * 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_and_named() {
        let error =
            toml::from_str::<PlinthConfig>("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("lisen"), "{error}");
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let printed = toml::to_string(&PlinthConfig::default()).unwrap();
        let parsed: PlinthConfig = toml::from_str(&printed).unwrap();
        assert_eq!(parsed.server.listen, PlinthConfig::default().server.listen);
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let mut config = PlinthConfig::default();
        config.auth.bootstrap_admin_key = Some(Secret::new("pk_very_secret".to_string()));
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("pk_very_secret"));
        assert!(printed.contains(crate::secret::REDACTED));
    }
}
