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
use crate::{Error, HumanDuration, Secret};

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
    pub cache: CacheConfig,
    pub events: EventsConfig,
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
            cache: CacheConfig::default(),
            events: EventsConfig::default(),
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

// Cache keyspaces.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionKind {
    /// Admits new entries by estimated frequency (moka's TinyLFU); the best
    /// hit ratio for skewed loads.
    TinyLfu,
    /// Evicts the least recently used entry.
    Lru,
}

/// The largest value any keyspace may accept.
pub const HARD_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1Config {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// No entry stays in L1 longer than this.
    pub ttl_cap: HumanDuration,
    pub eviction: EvictionKind,
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            ttl_cap: HumanDuration::from_secs(300),
            eviction: EvictionKind::TinyLfu,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedTierKind {
    /// No shared tier.
    #[default]
    None,
    /// The node's Redis (`redis.url`).
    Redis,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurableTierKind {
    /// A pure cache: nothing survives Redis and every node restarting.
    #[default]
    None,
    /// The node's durable store (`storage.url`: SQLite or PostgreSQL).
    Store,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyspaceConfig {
    /// The in-process tier; `null` disables it.
    pub l1: Option<L1Config>,
    pub l2: SharedTierKind,
    pub store: DurableTierKind,
    /// TTL of writes that give none; `null` keeps them until deleted.
    pub default_ttl: Option<HumanDuration>,
    /// Larger values are refused with 413.
    pub max_value_bytes: usize,
    /// Values at least this large are stored compressed (lz4) in Redis and
    /// the store; `null` never compresses.
    pub compression_threshold: Option<usize>,
    /// Encrypt values (AES-256-GCM, key `cache.encryption_key`) in Redis
    /// and the store.
    pub encrypt: bool,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        KeyspaceConfig {
            l1: Some(L1Config::default()),
            l2: SharedTierKind::None,
            store: DurableTierKind::Store,
            default_ttl: None,
            max_value_bytes: 1024 * 1024,
            compression_threshold: Some(4096),
            encrypt: false,
        }
    }
}

impl KeyspaceConfig {
    /// Checks the configuration can be served by this node.
    pub fn validate(&self, redis_available: bool, encryption_available: bool) -> Result<(), Error> {
        if self.l1.is_none()
            && self.l2 == SharedTierKind::None
            && self.store == DurableTierKind::None
        {
            return Err(invalid_config(
                "a keyspace needs at least one tier: set l1, l2 or store",
            ));
        }
        if self.l2 == SharedTierKind::Redis && !redis_available {
            return Err(invalid_config(
                "l2 = \"redis\" needs redis.url in the node configuration",
            ));
        }
        if self.encrypt && !encryption_available {
            return Err(invalid_config(
                "encrypt = true needs cache.encryption_key in the node configuration",
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > HARD_MAX_VALUE_BYTES {
            return Err(invalid_config(
                "max_value_bytes must be between 1 and 16777216",
            ));
        }
        if let Some(l1) = &self.l1 {
            if l1.max_entries == 0 || l1.max_bytes == 0 {
                return Err(invalid_config(
                    "l1.max_entries and l1.max_bytes must be above zero",
                ));
            }
            if l1.ttl_cap.as_duration().is_zero() {
                return Err(invalid_config("l1.ttl_cap must be above zero"));
            }
        }
        if let Some(ttl) = self.default_ttl
            && ttl.as_duration().is_zero()
        {
            return Err(invalid_config(
                "default_ttl must be above zero, or null for no expiry",
            ));
        }
        Ok(())
    }
}

fn invalid_config(detail: &str) -> Error {
    Error::invalid_argument("invalid_keyspace_config", detail)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Base64 of 32 random bytes: the AES-256-GCM key for keyspaces with
    /// `encrypt = true`.
    pub encryption_key: Option<Secret<String>>,
    /// While the Redis pub/sub channel that keeps nodes' L1 copies coherent
    /// is down, L1 copies live at most this long.
    pub coherence_fallback_ttl: HumanDuration,
    /// Configuration of keyspaces created by a first write.
    pub default_keyspace: KeyspaceConfig,
    /// Keyspaces configured at start-up (created or reconfigured).
    pub keyspaces: Vec<ConfiguredKeyspace>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            encryption_key: None,
            coherence_fallback_ttl: HumanDuration::from_secs(1),
            default_keyspace: KeyspaceConfig::default(),
            keyspaces: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredKeyspace {
    pub tenant: String,
    pub name: String,
    pub config: KeyspaceConfig,
    /// Keys loaded into the faster tiers in the background once the node
    /// listens; `null` warms nothing.
    #[serde(default)]
    pub warm: Option<WarmSpec>,
}

/// `max_keys` when a warm spec gives none.
pub const DEFAULT_MAX_WARM_KEYS: usize = 10_000;
/// The most keys one warming may load, whatever `max_keys` says.
pub const HARD_MAX_WARM_KEYS: usize = 1_000_000;

/// Which keys a warming loads from a keyspace's store (or Redis) into its
/// faster tiers: exactly one of `prefix`, `keys` or `all = true`, and at
/// most `max_keys` of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmSpec {
    /// Every live key starting with this, in key order.
    #[serde(default)]
    pub prefix: Option<String>,
    /// These keys.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// Every live key, in key order.
    #[serde(default)]
    pub all: bool,
    #[serde(default = "default_max_warm_keys")]
    pub max_keys: usize,
}

fn default_max_warm_keys() -> usize {
    DEFAULT_MAX_WARM_KEYS
}

/// A [`WarmSpec`] once checked: what it selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WarmSelection {
    /// Keys starting with this; `all` is the empty prefix.
    Prefix(String),
    Keys(Vec<String>),
}

impl WarmSpec {
    /// Checks the spec names exactly one selection within the bounds.
    pub fn selection(&self) -> Result<WarmSelection, Error> {
        if self.max_keys == 0 || self.max_keys > HARD_MAX_WARM_KEYS {
            return Err(invalid_warm_spec(format!(
                "max_keys must be between 1 and {HARD_MAX_WARM_KEYS}"
            )));
        }
        let selection = match (&self.prefix, &self.keys, self.all) {
            (Some(prefix), None, false) => WarmSelection::Prefix(prefix.clone()),
            (None, Some(keys), false) => WarmSelection::Keys(keys.clone()),
            (None, None, true) => WarmSelection::Prefix(String::new()),
            _ => {
                return Err(invalid_warm_spec(
                    "give exactly one of prefix, keys or all = true".to_string(),
                ));
            }
        };
        if let WarmSelection::Keys(keys) = &selection {
            if keys.is_empty() {
                return Err(invalid_warm_spec(
                    "keys is empty; list at least one key, or use prefix or all".to_string(),
                ));
            }
            if keys.len() > self.max_keys {
                return Err(invalid_warm_spec(format!(
                    "keys lists {} keys but max_keys is {}; raise max_keys (at most {HARD_MAX_WARM_KEYS}) or list fewer keys",
                    keys.len(),
                    self.max_keys
                )));
            }
        }
        Ok(selection)
    }
}

fn invalid_warm_spec(detail: String) -> Error {
    Error::invalid_argument("invalid_warm_spec", detail)
}

// The event store.

/// Limits of the event store. Appends and reads beyond them are refused
/// with a 4xx that names the limit, and nothing is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The most events one append may carry.
    pub max_events_per_append: usize,
    /// The largest event: its JSON data and metadata together, in bytes.
    pub max_event_bytes: usize,
    /// The largest append: every event's data and metadata, in bytes.
    pub max_append_bytes: usize,
    /// The most events one read returns; larger limits are lowered to it.
    pub max_read_count: usize,
    /// Events a scavenge removes per transaction, so it never holds a
    /// stream (or SQLite's writer) for long.
    pub scavenge_batch_size: usize,
    /// How often a node scavenges by itself (retention is then enforced
    /// on disk without an operator); `0s` leaves it to the admin route.
    pub scavenge_interval: HumanDuration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_events_per_append: 1_000,
            max_event_bytes: 1024 * 1024,
            max_append_bytes: 8 * 1024 * 1024,
            max_read_count: 1_000,
            scavenge_batch_size: 500,
            scavenge_interval: HumanDuration::from_secs(3600),
        }
    }
}

impl EventsConfig {
    /// Checks every limit is usable.
    pub fn validate(&self) -> Result<(), Error> {
        let limits = [
            ("max_events_per_append", self.max_events_per_append),
            ("max_event_bytes", self.max_event_bytes),
            ("max_append_bytes", self.max_append_bytes),
            ("max_read_count", self.max_read_count),
            ("scavenge_batch_size", self.scavenge_batch_size),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(Error::invalid_argument(
                    "invalid_events_config",
                    format!("events.{name} must be above zero"),
                ));
            }
        }
        if self.max_append_bytes < self.max_event_bytes {
            return Err(Error::invalid_argument(
                "invalid_events_config",
                "events.max_append_bytes must be at least events.max_event_bytes",
            ));
        }
        Ok(())
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
    fn warm_specs_need_exactly_one_selection_within_the_bounds() {
        let parse = |json: &str| serde_json::from_str::<WarmSpec>(json).unwrap();
        assert_eq!(
            parse(r#"{"prefix": "user:"}"#).selection().unwrap(),
            WarmSelection::Prefix("user:".to_string())
        );
        assert_eq!(
            parse(r#"{"all": true}"#).selection().unwrap(),
            WarmSelection::Prefix(String::new())
        );
        assert_eq!(parse(r#"{"all": true}"#).max_keys, DEFAULT_MAX_WARM_KEYS);
        assert_eq!(
            parse(r#"{"keys": ["a", "b"], "max_keys": 2}"#)
                .selection()
                .unwrap(),
            WarmSelection::Keys(vec!["a".to_string(), "b".to_string()])
        );
        for invalid in [
            r#"{}"#,
            r#"{"all": false}"#,
            r#"{"prefix": "a", "all": true}"#,
            r#"{"prefix": "a", "keys": ["b"]}"#,
            r#"{"keys": []}"#,
            r#"{"keys": ["a", "b"], "max_keys": 1}"#,
            r#"{"all": true, "max_keys": 0}"#,
            r#"{"all": true, "max_keys": 1000001}"#,
        ] {
            let error = parse(invalid).selection().unwrap_err();
            assert_eq!(error.code(), "invalid_warm_spec", "{invalid}");
        }
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
