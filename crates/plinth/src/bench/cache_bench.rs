//! `plinth bench cache`: the cache block over HTTP next to Redis on the
//! same machine. Starts `redis-server` (or uses `--redis-url`) and a
//! `plinth serve` child whose L2 is that Redis, creates one keyspace per
//! measurement through the API, fills it, and drives:
//!
//! - `get-l1`: GETs answered by L1 (the keys fit in it);
//! - `get-l2`: GETs answered by Redis (the keyspace has no L1);
//! - `put`: PUTs into a keyspace without a store (L1 and Redis);
//! - `hot`: an 80/20 workload (a fifth of the keys gets four fifths of the
//!   reads) against an L1 that holds a fifth of the keys, whose L1 hit ratio
//!   is read from the keyspace's stats before and after the window.
//!
//! Values are 256 bytes. The first three run at `--concurrency` and at one
//! connection; `redis-benchmark` SET and GET run at the same two
//! concurrencies with `-d 256` against the same Redis, after `plinth serve`
//! has been stopped so it does not compete for the cores.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use plinth_core::HumanDuration;
use plinth_core::config::PlinthConfig;
use serde_json::{Value, json};

use crate::bench::cache_report::{CacheBenchRun, HotWorkload, print_cache_report};
use crate::bench::client::{Endpoint, build_request, send_once};
use crate::bench::load::{
    KeyChoice, LoadShape, LoadTarget, TargetMeasurement, check_target_answers, key_name, measure,
};
use crate::bench::local_targets::LocalPlinth;
use crate::bench::provision::{bearer, create_bench_api_key};
use crate::bench::redis_baseline::{
    RedisBenchmarkShape, RedisMeasurement, RedisUnderTest, measure_set_and_get,
    redis_benchmark_is_installed,
};

/// The value size the targets are stated for.
const VALUE_BYTES: usize = 256;
const CACHE_KEY_SCOPES: [&str; 3] = ["cache:read", "cache:write", "cache:admin"];
const L1_GET_KEYSPACE: &str = "bench-l1";
const L2_GET_KEYSPACE: &str = "bench-l2";
const PUT_KEYSPACE: &str = "bench-put";
const HOT_KEYSPACE: &str = "bench-hot";
/// Share of the keys that is hot, and share of the reads they get.
const HOT_KEY_PERCENT: u64 = 20;
const HOT_REQUEST_PERCENT: u64 = 80;
/// `max_bytes / max_entries` of every bench L1: far above a 256-byte
/// entry's weight, so `max_entries` alone bounds the L1.
const L1_BYTES_PER_ENTRY: u64 = 4096;
/// The `hot` warm-up lasts until L1 has seen this many reads per entry: in
/// a simulation of this workload TinyLFU hit 57% over the first 10 reads
/// per entry, 78% from 30 on and 79% from 40 on. A window measured earlier
/// would report the transient, not the policy.
const HOT_WARMUP_READS_PER_L1_ENTRY: u64 = 40;
/// The `hot` warm-up stops after this long even if it made fewer reads.
const HOT_WARMUP_LIMIT: Duration = Duration::from_secs(60);
/// Items per bulk-put while filling a keyspace (the API's maximum).
const FILL_BATCH_KEYS: u64 = 1000;
const UNLOADED_CONNECTIONS: usize = 1;

#[derive(Debug, Args)]
pub struct CacheBenchArguments {
    /// Measured time per target and pass, after the warm-up; also the
    /// length of each redis-benchmark run.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    duration: HumanDuration,
    /// Unmeasured load before each measured window.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    warmup: HumanDuration,
    /// Keep-alive connections of the loaded pass (and `-c` of
    /// redis-benchmark). A pass at one connection always runs as well.
    #[arg(long, value_name = "CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Use this Redis (`redis://host:port`) as plinth's L2 and for
    /// redis-benchmark instead of starting redis-server.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Keys of the GET and PUT targets, each request picking one at random
    /// (and `-r` of redis-benchmark).
    #[arg(long, value_name = "COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    keys: u64,
    /// Keys of the 80/20 workload; its L1 holds a fifth of them.
    #[arg(long, value_name = "COUNT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(5..=1_000_000))]
    hot_keys: u64,
}

/// Where the measured windows come from.
struct PassPlan {
    warmup: Duration,
    duration: Duration,
    loaded_connections: usize,
}

impl PassPlan {
    fn connections_per_pass(&self) -> Vec<usize> {
        if self.loaded_connections == UNLOADED_CONNECTIONS {
            return vec![UNLOADED_CONNECTIONS];
        }
        vec![self.loaded_connections, UNLOADED_CONNECTIONS]
    }
}

pub async fn run(config: &PlinthConfig, arguments: CacheBenchArguments) -> anyhow::Result<()> {
    let plan = PassPlan {
        warmup: arguments.warmup.as_duration(),
        duration: arguments.duration.as_duration(),
        loaded_connections: arguments.concurrency as usize,
    };
    if plan.duration.is_zero() {
        anyhow::bail!("--duration must be longer than zero");
    }
    let mut notes = Vec::new();
    let redis = prepare_redis(arguments.redis_url.as_deref(), &mut notes).await?;
    let mut plinth_settings = Vec::new();
    if let Some(redis) = &redis {
        plinth_settings.push(("PLINTH_REDIS__URL", redis.url.clone()));
    }
    let mut plinth = LocalPlinth::start(&config.log.level, &plinth_settings).await?;
    eprintln!(
        "started plinth serve on {} (log level `{}`, JSON logs to a file){}",
        plinth.endpoint.socket_address,
        config.log.level,
        redis
            .as_ref()
            .map(|redis| format!(" with Redis {} as L2", redis.url))
            .unwrap_or_default()
    );
    let api_key = create_bench_api_key(
        &plinth.endpoint,
        &plinth.bootstrap_admin_key,
        &CACHE_KEY_SCOPES,
    )
    .await?;
    let client = SetupClient {
        endpoint: plinth.endpoint.clone(),
        authorization: bearer(&api_key)?,
    };
    let keyspaces = BenchKeyspaces::plan(redis.is_some(), arguments.keys, arguments.hot_keys);
    keyspaces.create_and_fill(&client).await?;
    let targets = keyspaces.targets(&client, plinth.process_id());
    for target in &targets {
        check_target_answers(target).await?;
    }
    keyspaces.check_answering_tiers(&client).await?;
    let mut measurements = Vec::new();
    for connections in plan.connections_per_pass() {
        for target in &targets {
            plinth.ensure_running()?;
            measurements.push(measure_one(Arc::clone(target), connections, &plan).await?);
        }
    }
    plinth.ensure_running()?;
    let hot_workload =
        measure_hot_workload(&client, &keyspaces, &plan, plinth.process_id()).await?;
    plinth.ensure_running()?;
    plinth.stop().await?;
    let redis_measurements = measure_redis(redis.as_ref(), &arguments, &plan, &mut notes).await?;
    let run = CacheBenchRun {
        loaded_connections: plan.loaded_connections,
        measurements,
        hot_workload,
        redis_measurements,
        notes,
    };
    print_cache_report(&run);
    Ok(())
}

/// The Redis given by URL, else a redis-server child; `None` (with a note
/// saying why) when neither is available.
async fn prepare_redis(
    redis_url: Option<&str>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<RedisUnderTest>> {
    if let Some(url) = redis_url {
        return Ok(Some(RedisUnderTest::external(url)));
    }
    match RedisUnderTest::start_local().await? {
        Ok(redis) => {
            eprintln!("started redis-server at {}", redis.url);
            Ok(Some(redis))
        }
        Err(reason) => {
            let note = format!(
                "no Redis: {reason}. Skipped: get-l2, the Redis baselines and every Plinth/Redis ratio; the put keyspace is L1 only and the 80/20 keyspace is backed by the store"
            );
            eprintln!("{note}");
            notes.push(note);
            Ok(None)
        }
    }
}

async fn measure_redis(
    redis: Option<&RedisUnderTest>,
    arguments: &CacheBenchArguments,
    plan: &PassPlan,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<RedisMeasurement>> {
    let Some(redis) = redis else {
        return Ok(Vec::new());
    };
    if !redis_benchmark_is_installed().await {
        notes.push(
            "`redis-benchmark` is not installed (apt-get install redis-tools or redis-server): no Redis baseline and no Plinth/Redis ratio".to_string(),
        );
        return Ok(Vec::new());
    }
    let mut measurements = Vec::new();
    for connections in plan.connections_per_pass() {
        eprintln!(
            "measuring redis-benchmark SET and GET at {connections} connection(s) against {}{}",
            redis.url,
            redis
                .process_id()
                .map(|_| " (the redis-server this run started)")
                .unwrap_or_default()
        );
        let shape = RedisBenchmarkShape {
            connections,
            value_bytes: VALUE_BYTES,
            keys: arguments.keys,
            duration: plan.duration,
        };
        measurements.extend(measure_set_and_get(redis, &shape).await?);
    }
    Ok(measurements)
}

async fn measure_one(
    target: Arc<LoadTarget>,
    connections: usize,
    plan: &PassPlan,
) -> anyhow::Result<TargetMeasurement> {
    eprintln!(
        "measuring {} {} {} at {connections} connection(s): {} warm-up, {} measured",
        target.name,
        target.method,
        target.shown_path(),
        HumanDuration(plan.warmup),
        HumanDuration(plan.duration)
    );
    let shape = LoadShape {
        connections,
        warmup: plan.warmup,
        duration: plan.duration,
    };
    measure(target, shape).await
}

/// The warm-up runs on its own so the stats read between it and the window
/// cover exactly the measured requests; it lasts `--warmup` at least and
/// until TinyLFU has converged (see [`HOT_WARMUP_READS_PER_L1_ENTRY`]).
async fn measure_hot_workload(
    client: &SetupClient,
    keyspaces: &BenchKeyspaces,
    plan: &PassPlan,
    plinth_process_id: Option<u32>,
) -> anyhow::Result<HotWorkload> {
    let target = Arc::new(keyspaces.hot_target(client, plinth_process_id));
    eprintln!(
        "measuring {} {} at {} connection(s) ({}% of the reads to {}% of {} keys; L1 holds {}): warm-up in passes of {} until {} reads, {} measured",
        target.name,
        target.shown_path(),
        plan.loaded_connections,
        HOT_REQUEST_PERCENT,
        HOT_KEY_PERCENT,
        keyspaces.hot_keys,
        keyspaces.hot_l1_entries(),
        HumanDuration(plan.warmup),
        keyspaces.hot_l1_entries() * HOT_WARMUP_READS_PER_L1_ENTRY,
        HumanDuration(plan.duration)
    );
    let warmup_reads = warm_up_hot_workload(&target, plan, keyspaces.hot_l1_entries()).await?;
    let before = client.l1_lookups(HOT_KEYSPACE).await?;
    let shape = LoadShape {
        connections: plan.loaded_connections,
        warmup: Duration::ZERO,
        duration: plan.duration,
    };
    let measurement = measure(target, shape).await?;
    let after = client.l1_lookups(HOT_KEYSPACE).await?;
    Ok(HotWorkload {
        measurement,
        keys: keyspaces.hot_keys,
        l1_entries_configured: keyspaces.hot_l1_entries(),
        l1_hits: after.hits.saturating_sub(before.hits),
        l1_misses: after.misses.saturating_sub(before.misses),
        l1_evictions: after.evictions.saturating_sub(before.evictions),
        warmup_reads,
    })
}

/// Reads in passes of `--warmup` until L1 has seen
/// [`HOT_WARMUP_READS_PER_L1_ENTRY`] reads per entry or
/// [`HOT_WARMUP_LIMIT`] has passed; returns how many reads were made. No
/// warm-up at all with `--warmup 0s`.
async fn warm_up_hot_workload(
    target: &Arc<LoadTarget>,
    plan: &PassPlan,
    l1_entries: u64,
) -> anyhow::Result<u64> {
    if plan.warmup.is_zero() {
        return Ok(0);
    }
    let wanted_reads = l1_entries.saturating_mul(HOT_WARMUP_READS_PER_L1_ENTRY);
    let started = std::time::Instant::now();
    let mut reads = 0;
    loop {
        let pass = LoadShape {
            connections: plan.loaded_connections,
            warmup: Duration::ZERO,
            duration: plan.warmup,
        };
        let warmed = measure(Arc::clone(target), pass).await?;
        reads += warmed.successful_requests + warmed.failed_requests;
        if reads >= wanted_reads || started.elapsed() >= HOT_WARMUP_LIMIT {
            return Ok(reads);
        }
    }
}

/// The keyspaces of one run, shaped by whether Redis is there.
struct BenchKeyspaces {
    redis_available: bool,
    keys: u64,
    hot_keys: u64,
}

impl BenchKeyspaces {
    fn plan(redis_available: bool, keys: u64, hot_keys: u64) -> BenchKeyspaces {
        BenchKeyspaces {
            redis_available,
            keys,
            hot_keys,
        }
    }

    fn hot_l1_entries(&self) -> u64 {
        (self.hot_keys * HOT_KEY_PERCENT / 100).max(1)
    }

    /// Name, configuration and key count of each keyspace.
    fn configurations(&self) -> Vec<(&'static str, Value, u64)> {
        let redis_or_none = if self.redis_available {
            "redis"
        } else {
            "none"
        };
        let mut configurations = vec![(
            L1_GET_KEYSPACE,
            keyspace_config(Some(self.keys), "none", "store"),
            self.keys,
        )];
        if self.redis_available {
            configurations.push((
                L2_GET_KEYSPACE,
                keyspace_config(None, "redis", "none"),
                self.keys,
            ));
        }
        configurations.push((
            PUT_KEYSPACE,
            keyspace_config(Some(self.keys), redis_or_none, "none"),
            self.keys,
        ));
        // Without Redis the store must hold what the small L1 drops.
        let hot_backing_store = if self.redis_available {
            "none"
        } else {
            "store"
        };
        configurations.push((
            HOT_KEYSPACE,
            keyspace_config(
                Some(self.hot_l1_entries()),
                redis_or_none,
                hot_backing_store,
            ),
            self.hot_keys,
        ));
        configurations
    }

    async fn create_and_fill(&self, client: &SetupClient) -> anyhow::Result<()> {
        for (keyspace, configuration, key_count) in self.configurations() {
            eprintln!(
                "creating keyspace {keyspace} ({configuration}) and writing {key_count} keys"
            );
            client
                .send_expecting(
                    Method::PUT,
                    &format!("/v1/keyspaces/{keyspace}"),
                    Some(&configuration),
                    StatusCode::OK,
                )
                .await
                .with_context(|| format!("creating keyspace {keyspace}"))?;
            client.fill(keyspace, key_count).await?;
        }
        Ok(())
    }

    fn targets(
        &self,
        client: &SetupClient,
        plinth_process_id: Option<u32>,
    ) -> Vec<Arc<LoadTarget>> {
        let uniform = KeyChoice::Uniform { count: self.keys };
        let mut targets = vec![client.target(
            "get-l1",
            Method::GET,
            L1_GET_KEYSPACE,
            uniform,
            plinth_process_id,
        )];
        if self.redis_available {
            targets.push(client.target(
                "get-l2",
                Method::GET,
                L2_GET_KEYSPACE,
                uniform,
                plinth_process_id,
            ));
        }
        targets.push(client.target("put", Method::PUT, PUT_KEYSPACE, uniform, plinth_process_id));
        targets.into_iter().map(Arc::new).collect()
    }

    fn hot_target(&self, client: &SetupClient, plinth_process_id: Option<u32>) -> LoadTarget {
        let choice = KeyChoice::HotSet {
            count: self.hot_keys,
            hot_count: (self.hot_keys * HOT_KEY_PERCENT / 100).max(1),
            hot_request_percent: HOT_REQUEST_PERCENT,
        };
        client.target("hot", Method::GET, HOT_KEYSPACE, choice, plinth_process_id)
    }

    /// A GET target only measures what it claims if the expected tier
    /// answers: one read each, then the keyspace's stats must show a hit
    /// there.
    async fn check_answering_tiers(&self, client: &SetupClient) -> anyhow::Result<()> {
        let mut expected = vec![(L1_GET_KEYSPACE, "l1")];
        if self.redis_available {
            expected.push((L2_GET_KEYSPACE, "redis"));
        }
        for (keyspace, tier) in expected {
            let path = format!("/v1/cache/{keyspace}/{}", key_name(0));
            client
                .send_expecting(Method::GET, &path, None, StatusCode::OK)
                .await?;
            let stats = client.stats(keyspace).await?;
            if tier_hits(&stats, tier) == 0 {
                anyhow::bail!(
                    "keyspace {keyspace} should answer from {tier}, but its stats show no hit there: {stats}"
                );
            }
        }
        Ok(())
    }
}

fn keyspace_config(l1_entries: Option<u64>, l2: &str, store: &str) -> Value {
    let l1 = l1_entries.map(|max_entries| {
        json!({
            "max_entries": max_entries,
            "max_bytes": max_entries * L1_BYTES_PER_ENTRY,
            // Longer than any run: nothing expires while measured.
            "ttl_cap": "1h",
            "eviction": "tiny_lfu",
        })
    });
    json!({
        "l1": l1,
        "l2": l2,
        "store": store,
        "default_ttl": null,
        "compression_threshold": null,
    })
}

fn bench_value() -> Bytes {
    Bytes::from(vec![b'v'; VALUE_BYTES])
}

/// L1 figures of a keyspace at one moment.
struct L1Lookups {
    hits: u64,
    misses: u64,
    evictions: u64,
}

fn tier_hits(stats: &Value, tier: &str) -> u64 {
    tier_count(stats, tier, "hits")
}

fn tier_count(stats: &Value, tier: &str, field: &str) -> u64 {
    stats["tiers"]
        .as_array()
        .and_then(|tiers| tiers.iter().find(|entry| entry["tier"] == tier))
        .and_then(|entry| entry[field].as_u64())
        .unwrap_or(0)
}

/// Set-up calls with the bench key: one connection each, never measured.
struct SetupClient {
    endpoint: Endpoint,
    authorization: HeaderValue,
}

impl SetupClient {
    fn target(
        &self,
        name: &'static str,
        method: Method,
        keyspace: &str,
        keys: KeyChoice,
        server_process_id: Option<u32>,
    ) -> LoadTarget {
        let body = if method == Method::PUT {
            bench_value()
        } else {
            Bytes::new()
        };
        LoadTarget {
            name,
            endpoint: self.endpoint.clone(),
            method,
            path: format!("/v1/cache/{keyspace}/"),
            keys,
            body,
            authorization: Some(self.authorization.clone()),
            content_type: None,
            server_process_id,
        }
    }

    /// Writes keys `0..key_count` through bulk-put, as a client would.
    async fn fill(&self, keyspace: &str, key_count: u64) -> anyhow::Result<()> {
        let value = String::from_utf8(bench_value().to_vec()).context("the value is ASCII")?;
        let mut first = 0;
        while first < key_count {
            let last = (first + FILL_BATCH_KEYS).min(key_count);
            let items: Vec<Value> = (first..last)
                .map(|index| json!({ "key": key_name(index), "value": value }))
                .collect();
            self.send_expecting(
                Method::POST,
                &format!("/v1/keyspaces/{keyspace}/bulk-put"),
                Some(&json!({ "items": items })),
                StatusCode::OK,
            )
            .await
            .with_context(|| format!("filling keyspace {keyspace}"))?;
            first = last;
        }
        Ok(())
    }

    async fn stats(&self, keyspace: &str) -> anyhow::Result<Value> {
        self.send_expecting(
            Method::GET,
            &format!("/v1/keyspaces/{keyspace}/stats"),
            None,
            StatusCode::OK,
        )
        .await
    }

    async fn l1_lookups(&self, keyspace: &str) -> anyhow::Result<L1Lookups> {
        let stats = self.stats(keyspace).await?;
        Ok(L1Lookups {
            hits: tier_count(&stats, "l1", "hits"),
            misses: tier_count(&stats, "l1", "misses"),
            evictions: stats["l1"]["evictions"].as_u64().unwrap_or(0),
        })
    }

    /// Sends one request and fails unless it answers `expected`; returns
    /// the JSON answer (`null` for an empty or non-JSON body).
    async fn send_expecting(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let encoded = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        let mut request = build_request(method.clone(), &self.endpoint, path, encoded)?;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.authorization.clone());
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let (status, answer) = send_once(&self.endpoint, request).await?;
        if status != expected {
            anyhow::bail!(
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_redis_there_is_no_l2_keyspace_and_nothing_names_redis() {
        let keyspaces = BenchKeyspaces::plan(false, 1000, 10_000);
        let configurations = keyspaces.configurations();
        let names: Vec<&str> = configurations.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, vec![L1_GET_KEYSPACE, PUT_KEYSPACE, HOT_KEYSPACE]);
        for (_, configuration, _) in &configurations {
            assert_eq!(configuration["l2"], "none");
        }
        let (_, hot, hot_keys) = &configurations[2];
        assert_eq!(hot["store"], "store");
        assert_eq!(hot["l1"]["max_entries"], 2000);
        assert_eq!(*hot_keys, 10_000);
    }

    #[test]
    fn with_redis_the_l2_keyspace_has_no_l1_and_the_put_keyspace_no_store() {
        let configurations = BenchKeyspaces::plan(true, 1000, 10_000).configurations();
        let l2 = &configurations[1].1;
        assert_eq!(configurations[1].0, L2_GET_KEYSPACE);
        assert!(l2["l1"].is_null());
        assert_eq!(l2["l2"], "redis");
        let put = &configurations[2].1;
        assert_eq!(put["store"], "none");
        assert_eq!(put["l2"], "redis");
    }

    #[test]
    fn a_tier_count_is_read_from_the_stats_document() {
        let stats = json!({"tiers": [{"tier": "l1", "hits": 7, "misses": 3}]});
        assert_eq!(tier_hits(&stats, "l1"), 7);
        assert_eq!(tier_count(&stats, "l1", "misses"), 3);
        assert_eq!(tier_hits(&stats, "redis"), 0);
    }
}
