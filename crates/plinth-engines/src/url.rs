//! Engines are chosen by URL scheme: `sqlite://`, `postgres://` (or
//! `postgresql://`), `redis://` (or `rediss://`).

use std::path::{Path, PathBuf};

use plinth_core::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A parsed durable-store URL.
#[derive(Clone, Debug)]
pub enum EngineUrl {
    /// Path to the database file.
    Sqlite(PathBuf),
    /// The full connection URL, passed to the driver as is.
    Postgres(String),
}

impl EngineUrl {
    /// Parses a store URL; `None` means the embedded default under
    /// `data_dir`.
    pub fn parse_store(url: Option<&str>, data_dir: &Path) -> Result<Self, Error> {
        let Some(url) = url else {
            return Ok(EngineUrl::Sqlite(data_dir.join("plinth.db")));
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(Error::invalid_argument(
                    "invalid_engine_url",
                    "storage.url `sqlite://` needs a path, like `sqlite://./plinth-data/plinth.db`",
                ));
            }
            return Ok(EngineUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(EngineUrl::Postgres(url.to_string()));
        }
        Err(Error::invalid_argument(
            "invalid_engine_url",
            "storage.url must start with `sqlite://` or `postgres://`",
        ))
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            EngineUrl::Sqlite(_) => StoreKind::Sqlite,
            EngineUrl::Postgres(_) => StoreKind::Postgres,
        }
    }
}

/// Checks a Redis URL's scheme without echoing it (it may hold a password).
pub fn validate_redis_url(url: &str) -> Result<(), Error> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(());
    }
    Err(Error::invalid_argument(
        "invalid_engine_url",
        "redis.url must start with `redis://` or `rediss://`",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_pick_the_engine() {
        let data_dir = Path::new("/tmp/data");
        assert!(matches!(
            EngineUrl::parse_store(None, data_dir).unwrap(),
            EngineUrl::Sqlite(path) if path == Path::new("/tmp/data/plinth.db")
        ));
        assert_eq!(
            EngineUrl::parse_store(Some("sqlite:///var/x.db"), data_dir)
                .unwrap()
                .kind(),
            StoreKind::Sqlite
        );
        assert_eq!(
            EngineUrl::parse_store(Some("postgres://u@h/db"), data_dir)
                .unwrap()
                .kind(),
            StoreKind::Postgres
        );
        assert!(EngineUrl::parse_store(Some("mysql://x"), data_dir).is_err());
        assert!(EngineUrl::parse_store(Some("sqlite://"), data_dir).is_err());
        assert!(validate_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(validate_redis_url("http://127.0.0.1").is_err());
    }
}
