//! The quickstart's project folder and its steps around the generator: the stand-in catalog
//! (`catalog/quickstart/`) and the repository's views (`sql/`), both compiled into the binary;
//! the folder it may start over; the stand-in tables; the roles at work; one refresh of
//! every view in dependency order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use medlake_engine::{Engine, Output, Statement};

use crate::Failure;

/// The stand-in catalog (`catalog/quickstart/`), `{{landing}}` replaced by `DIR/landing`.
const CATALOG: &[(&str, &str)] = &[
    (
        "blob.sql",
        include_str!("../../../catalog/quickstart/blob.sql"),
    ),
    (
        "cosmos.sql",
        include_str!("../../../catalog/quickstart/cosmos.sql"),
    ),
    (
        "ehr.sql",
        include_str!("../../../catalog/quickstart/ehr.sql"),
    ),
    (
        "fhir.sql",
        include_str!("../../../catalog/quickstart/fhir.sql"),
    ),
    (
        "telemetry.sql",
        include_str!("../../../catalog/quickstart/telemetry.sql"),
    ),
    (
        "trials.sql",
        include_str!("../../../catalog/quickstart/trials.sql"),
    ),
];

/// The reference views (`sql/`), as they are.
pub const SQL: &[(&str, &str)] = &[
    ("access.sql", include_str!("../../../sql/access.sql")),
    (
        "alerts/clinical.sql",
        include_str!("../../../sql/alerts/clinical.sql"),
    ),
    (
        "alerts/operations.sql",
        include_str!("../../../sql/alerts/operations.sql"),
    ),
    (
        "bronze/ehr.sql",
        include_str!("../../../sql/bronze/ehr.sql"),
    ),
    (
        "bronze/events.sql",
        include_str!("../../../sql/bronze/events.sql"),
    ),
    (
        "bronze/files.sql",
        include_str!("../../../sql/bronze/files.sql"),
    ),
    (
        "bronze/fhir.sql",
        include_str!("../../../sql/bronze/fhir.sql"),
    ),
    (
        "bronze/hl7.sql",
        include_str!("../../../sql/bronze/hl7.sql"),
    ),
    (
        "bronze/telemetry.sql",
        include_str!("../../../sql/bronze/telemetry.sql"),
    ),
    (
        "bronze/trials.sql",
        include_str!("../../../sql/bronze/trials.sql"),
    ),
    (
        "silver/ehr.sql",
        include_str!("../../../sql/silver/ehr.sql"),
    ),
    (
        "silver/events.sql",
        include_str!("../../../sql/silver/events.sql"),
    ),
    (
        "silver/fhir.sql",
        include_str!("../../../sql/silver/fhir.sql"),
    ),
    (
        "silver/hl7.sql",
        include_str!("../../../sql/silver/hl7.sql"),
    ),
    (
        "silver/readings.sql",
        include_str!("../../../sql/silver/readings.sql"),
    ),
    (
        "silver/trials.sql",
        include_str!("../../../sql/silver/trials.sql"),
    ),
    (
        "gold/alert_response.sql",
        include_str!("../../../sql/gold/alert_response.sql"),
    ),
    (
        "gold/data_completeness.sql",
        include_str!("../../../sql/gold/data_completeness.sql"),
    ),
    (
        "gold/device_performance.sql",
        include_str!("../../../sql/gold/device_performance.sql"),
    ),
    (
        "gold/news2_hourly.sql",
        include_str!("../../../sql/gold/news2_hourly.sql"),
    ),
    (
        "gold/patient_daily_vitals.sql",
        include_str!("../../../sql/gold/patient_daily_vitals.sql"),
    ),
    (
        "gold/trial_cohort_vitals.sql",
        include_str!("../../../sql/gold/trial_cohort_vitals.sql"),
    ),
];

/// The file that marks a folder as the quickstart's (so that a rerun may start it over).
const MARKER: &str = ".medlake-quickstart";

/// Progress lines: step and elapsed time.
pub struct Progress {
    started: Instant,
}

impl Progress {
    /// Counts from now.
    pub fn start() -> Self {
        Progress {
            started: Instant::now(),
        }
    }

    /// Prints one progress line.
    pub fn say(&self, message: impl AsRef<str>) {
        println!(
            "[{:>6.1} s] {}",
            self.started.elapsed().as_secs_f64(),
            message.as_ref()
        );
    }
}

pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Failure {
    eprintln!("error: cannot {what} {}: {e}", path.display());
    Failure::Reported
}

/// The roles of `sql/access.sql` at work, as three users of a server's config would see them:
/// a clinician reads patients with their identifiers masked, a data engineer refreshes a gold
/// view, an auditor reads who did what in `system.audit`.
pub async fn show_roles(engine: &Engine, progress: &Progress) -> Result<(), Failure> {
    let user = |name: &str, role: &str| {
        let mut principal = medlake_engine::Principal::user(name, medlake_engine::Role::None);
        principal.roles.insert(role.to_string());
        engine.session_for(principal)
    };
    let clinician = user("clara", "clinician");
    let engineer = user("eddie", "data_engineer");
    let auditor = user("audrey", "auditor");
    let shown = [
        (
            &clinician,
            "clara (clinician)",
            "SELECT patient_id, mrn, family_name, birth_date FROM silver.patients ORDER BY patient_id LIMIT 3",
        ),
        (
            &engineer,
            "eddie (data_engineer)",
            "REFRESH MATERIALIZED VIEW gold.patient_daily_vitals",
        ),
        (
            &auditor,
            "audrey (auditor)",
            "SELECT user_name, door, kind, outcome, objects_read FROM system.audit WHERE user_name IN ('clara', 'eddie') ORDER BY seq",
        ),
    ];
    progress.say("roles (sql/access.sql), as three configured users would see them:");
    for (session, who, sql) in shown {
        let mut text = String::new();
        for output in session.sql(sql).await? {
            match output {
                medlake_engine::Output::Command { tag, .. } => text.push_str(&tag),
                rows @ medlake_engine::Output::Rows(_) => {
                    let batches = rows.collect().await?;
                    text.push_str(
                        &arrow::util::pretty::pretty_format_batches(&batches)
                            .map_err(|e| {
                                Failure::Error(medlake_engine::Error::Internal(e.to_string()))
                            })?
                            .to_string(),
                    );
                }
            }
        }
        println!("  {who}: {sql}");
        for line in text.lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

/// Makes `dir` (or starts an earlier quickstart's over) and returns it absolute.
pub fn prepare_dir(dir: &Path) -> Result<PathBuf, Failure> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| io_error("read", dir, e))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(Failure::Usage(format!(
                "{} exists and is not a quickstart folder: choose another --dir",
                dir.display()
            )));
        }
        for sub in ["warehouse", "landing", "project"] {
            let path = dir.join(sub);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(|e| io_error("remove", &path, e))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
    std::fs::write(
        dir.join(MARKER),
        "medlake quickstart folder: `medlake quickstart` deletes and rewrites warehouse/, landing/ and project/ here\n",
    )
    .map_err(|e| io_error("write", dir, e))?;
    std::path::absolute(dir).map_err(|e| io_error("resolve", dir, e))
}

/// The stand-in catalog, with `{{landing}}` replaced by the landing folder.
pub fn catalog_files(landing: &Path) -> Vec<(&'static str, String)> {
    CATALOG
        .iter()
        .map(|(name, text)| {
            (
                *name,
                text.replace("{{landing}}", &landing.display().to_string()),
            )
        })
        .collect()
}

pub fn write_project(project: &Path, landing: &Path) -> Result<(), Failure> {
    for sub in [
        "readings/csv",
        "readings/parquet",
        "pacs-export",
        "documents",
    ] {
        let path = landing.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| io_error("create", &path, e))?;
    }
    let write = |path: PathBuf, text: &str| -> Result<(), Failure> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io_error("write", &path, e))
    };
    for (name, text) in catalog_files(landing) {
        write(project.join("catalog").join(name), &text)?;
    }
    for (name, text) in SQL {
        write(project.join("sql").join(name), text)?;
    }
    Ok(())
}

/// Runs the stand-in catalog and the statements of sql/ that are not views (the push table),
/// so that the generator has tables to fill before the views are created.
pub async fn create_stand_ins(engine: &Engine, project: &Path) -> Result<(), Failure> {
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, _) in CATALOG {
        files.push(project.join("catalog").join(name));
    }
    for (name, _) in SQL {
        files.push(project.join("sql").join(name));
    }
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| io_error("read", &file, e))?;
        for statement in medlake_engine::parse(&text)? {
            // Views, and the grants and masks on them (sql/access.sql), come with `apply`.
            if matches!(
                statement,
                Statement::CreateMaterializedView(_) | Statement::Access(_) | Statement::Alert(_)
            ) {
                continue;
            }
            if let Output::Rows(stream) = engine.execute(statement).await? {
                Output::Rows(stream).collect().await?;
            }
        }
    }
    Ok(())
}

/// Refreshes every view once, each after the views it reads (as `apply` orders them).
pub async fn refresh_all(engine: &Engine, progress: &Progress) -> Result<(), Failure> {
    let views = engine.views();
    let list = views.list().await.map_err(medlake_engine::Error::from)?;
    let names: std::collections::BTreeSet<_> = list.iter().map(|v| v.name.clone()).collect();
    let mut upstream = BTreeMap::new();
    for view in &list {
        let reads: Vec<_> = views
            .references(&view.definition)
            .map_err(medlake_engine::Error::from)?
            .into_iter()
            .filter(|r| names.contains(r) && *r != view.name)
            .collect();
        upstream.insert(view.name.clone(), reads);
    }
    let mut done = std::collections::BTreeSet::new();
    while done.len() < upstream.len() {
        let ready: Vec<_> = upstream
            .iter()
            .filter(|(name, reads)| !done.contains(*name) && reads.iter().all(|r| done.contains(r)))
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() {
            return Err(Failure::Usage(
                "the views' dependencies form a cycle".into(),
            ));
        }
        for name in ready {
            for outcome in engine.refresh(&name.to_string(), false, false).await? {
                if outcome.mode != "none" {
                    progress.say(format!(
                        "  {}: {} ({}), {} rows written",
                        outcome.view,
                        outcome.status.as_str(),
                        outcome.mode,
                        outcome.rows_written
                    ));
                }
            }
            done.insert(name);
        }
    }
    Ok(())
}
