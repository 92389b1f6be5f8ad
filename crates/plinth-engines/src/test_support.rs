//! Helpers for tests that need a real engine. `scripts/test.sh` starts
//! PostgreSQL, Redis and RabbitMQ on loopback and exports their URLs; under
//! it (`PLINTH_TEST_REQUIRE_ENGINES=1`) a test whose engine is missing
//! fails. A plain `cargo test` skips such tests and says so.

/// The URL of a test engine from `variable`, or `None` (after printing
/// that the test is skipped) when it is unset outside the test script.
///
/// # Panics
/// When the variable is unset and `PLINTH_TEST_REQUIRE_ENGINES=1`.
pub fn engine_url(variable: &str, test_name: &str) -> Option<String> {
    if let Ok(url) = std::env::var(variable)
        && !url.is_empty()
    {
        return Some(url);
    }
    let required = std::env::var("PLINTH_TEST_REQUIRE_ENGINES").is_ok_and(|value| value == "1");
    assert!(
        !required,
        "{test_name} needs {variable}, which scripts/test.sh should have exported"
    );
    eprintln!(
        "skipping {test_name}: {variable} is not set (run scripts/test.sh to start the engines)"
    );
    None
}

pub fn postgres_url(test_name: &str) -> Option<String> {
    engine_url("PLINTH_TEST_POSTGRES_URL", test_name)
}

pub fn redis_url(test_name: &str) -> Option<String> {
    engine_url("PLINTH_TEST_REDIS_URL", test_name)
}

/// A fresh PostgreSQL schema for one test, so tests sharing one database
/// never see each other's tables. Returns a URL whose `search_path` points
/// at it.
pub async fn isolated_postgres_url(base_url: &str, test_name: &str) -> String {
    let schema = format!(
        "t_{}_{}",
        test_name
            .chars()
            .filter(|character| character.is_ascii_alphanumeric() || *character == '_')
            .take(30)
            .collect::<String>()
            .to_lowercase(),
        std::process::id()
    ) + &format!("_{}", rand::random::<u32>());
    let (client, connection) = tokio_postgres::connect(base_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create the test schema");
    crate::postgres::url_with_search_path(base_url, &schema)
}

/// A Redis engine on `url` with a default breaker, once it has connected.
///
/// # Panics
/// When the URL is invalid or Redis does not accept a connection within
/// five seconds.
pub async fn connected_redis(url: &str) -> std::sync::Arc<crate::RedisEngine> {
    let breaker = std::sync::Arc::new(plinth_core::resilience::CircuitBreaker::new(
        "redis",
        plinth_core::resilience::BreakerConfig::default(),
    ));
    let engine = crate::RedisEngine::start(url, breaker, std::time::Duration::from_secs(2))
        .expect("a valid redis url");
    engine
        .wait_connected(std::time::Duration::from_secs(5))
        .await
        .expect("the test redis accepts connections");
    engine
}
