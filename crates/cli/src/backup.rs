//! `medlake backup` and `medlake restore`: argument parsing and printing; the work is the
//! lake's (`medlake_lake::backup`, reached through `medlake_engine::backup`).

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use medlake_engine::backup::{self, BackedUpKind};

use crate::Failure;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The warehouse to back up: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// Where backups go (a folder or object-store URL). A later backup to the same place
    /// copies only what is new.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Back up the warehouse as it was at this instant ('2026-11-23 10:00:00' UTC, or RFC
    /// 3339); default now.
    #[arg(long, value_name = "TIMESTAMP")]
    at: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup target written by `medlake backup --to`.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The new warehouse: a folder or object-store URL that must be empty.
    #[arg(long, value_name = "DEST")]
    to: String,
    /// Restore the warehouse as it was at this instant (covered by a backup); default the
    /// newest backup's instant.
    #[arg(long, value_name = "TIMESTAMP")]
    at: Option<String>,
}

fn instant(at: Option<&str>) -> Result<Option<DateTime<Utc>>, Failure> {
    at.map(|text| {
        medlake_engine::parse_timestamp(text).map_err(|e| Failure::Usage(format!("--at: {e}")))
    })
    .transpose()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub async fn run_backup(args: BackupArgs) -> Result<(), Failure> {
    let at = instant(args.at.as_deref())?;
    let started = Instant::now();
    let manifest = backup::backup_location(&args.warehouse, &args.to, at)
        .await
        .map_err(medlake_engine::Error::from)?;
    for table in &manifest.tables {
        let what = match &table.kind {
            BackedUpKind::Delta { version, .. } => format!("version {version}"),
            BackedUpKind::External { .. } => "external (definition)".to_string(),
        };
        println!("{}.{}: {what}", table.schema, table.table);
    }
    println!(
        "backup {} of {}: {} tables, {} files ({} bytes) copied in {:.1} s",
        manifest.sequence,
        stamp(manifest.instant),
        manifest.tables.len(),
        manifest.files_copied,
        manifest.bytes_copied,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn run_restore(args: RestoreArgs) -> Result<(), Failure> {
    let at = instant(args.at.as_deref())?;
    let started = Instant::now();
    let report = backup::restore(&args.from, &args.to, at)
        .await
        .map_err(medlake_engine::Error::from)?;
    for (name, version) in &report.tables {
        match version {
            Some(v) => println!("{name}: version {v}"),
            None => println!("{name}: external (definition)"),
        }
    }
    println!(
        "restored {} as of {} from backup {}: {} tables, {} files ({} bytes) in {:.1} s",
        medlake_engine::redact_location(&args.to),
        stamp(report.instant),
        report.sequence,
        report.tables.len(),
        report.files_copied,
        report.bytes_copied,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
