//! `plinth migrate`: applies every pending schema migration to the
//! configured store and reports what it did. Safe to run again, and safe to
//! run while nodes are up (PostgreSQL migrations take an advisory lock).

use plinth_core::config::PlinthConfig;
use plinth_engines::Store;

pub async fn run(config: PlinthConfig) -> anyhow::Result<()> {
    let store = Store::open(&config)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let reports = store
        .migrate(&plinth_server::all_migration_sets())
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    for report in reports {
        if report.newly_applied.is_empty() {
            println!(
                "{}: up to date ({} applied before)",
                report.component, report.already_applied
            );
        } else {
            println!(
                "{}: applied {:?} ({} applied before)",
                report.component, report.newly_applied, report.already_applied
            );
        }
    }
    store.close().await;
    Ok(())
}
