//! `medlake scheduler`, `medlake executor`, and `--cluster` for `medlake serve` / `sql`: the
//! same binary in every role of a Ballista cluster (crates/cluster).

use std::path::PathBuf;

use medlake_cluster::{Cluster, ClusterTls, Functions};

use crate::Failure;

/// The cluster's mutual TLS, from flags or the environment.
#[derive(clap::Args, Debug, Default)]
pub struct TlsArgs {
    /// The cluster's CA (PEM): every member presents a certificate it signed.
    #[arg(long = "cluster-ca", env = "MEDLAKE_CLUSTER_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This member's certificate (PEM), used as server and as client.
    #[arg(
        long = "cluster-cert",
        env = "MEDLAKE_CLUSTER_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,
    /// This member's private key (PEM).
    #[arg(long = "cluster-key", env = "MEDLAKE_CLUSTER_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// `[cluster]` of the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEntry {
    /// `ballista://host:port`.
    pub scheduler: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Who scans external tables: `server` (the default) or `executors`.
    pub sources: Option<SourcesAt>,
}

/// Who scans external tables of queries and refreshes that run on a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourcesAt {
    /// This server (small ones travel to the executors as rows; a large one keeps its query
    /// here).
    Server,
    /// The executors, each with the connectors and its own `--config` (`[secrets]`,
    /// `[sources]`): secrets travel only as `${NAME}` references.
    Executors,
}

impl TlsArgs {
    /// The TLS files: these flags, else `[cluster]`'s; all three are needed.
    fn load(&self, entry: Option<&ClusterEntry>) -> Result<ClusterTls, Failure> {
        let pick = |flag: &Option<PathBuf>, field: fn(&ClusterEntry) -> &Option<PathBuf>| {
            flag.clone()
                .or_else(|| entry.and_then(|e| field(e).clone()))
        };
        let ca = pick(&self.ca, |e| &e.ca);
        let cert = pick(&self.cert, |e| &e.cert);
        let key = pick(&self.key, |e| &e.key);
        let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
            return Err(Failure::Usage(
                "a cluster needs mutual TLS: --cluster-ca, --cluster-cert and --cluster-key \
                 (or ca, cert and key in the config's [cluster])"
                    .into(),
            ));
        };
        ClusterTls::load(&ca, &cert, &key).map_err(|e| Failure::Usage(e.to_string()))
    }
}

/// `--cluster` of `medlake serve` and `medlake sql`.
#[derive(clap::Args, Debug, Default)]
pub struct ClusterArgs {
    /// Run queries on a Ballista cluster: the scheduler's `ballista://host:port` (or
    /// `[cluster] scheduler` in the config). Queries whose plan cannot leave (external
    /// tables, identity or keyed functions) and every write still run here.
    #[arg(long = "cluster", env = "MEDLAKE_CLUSTER", value_name = "URL")]
    pub scheduler: Option<String>,
    /// Who scans external tables: `server`, or `executors` (started with `--config` naming
    /// the same `[secrets]` and `[sources]`); default `[cluster] sources`, else `server`.
    #[arg(long = "cluster-sources", value_enum, value_name = "WHO")]
    pub sources: Option<SourcesAt>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ClusterArgs {
    /// The cluster to run queries on, if one is named.
    pub fn cluster(&self, entry: Option<&ClusterEntry>) -> Result<Option<Cluster>, Failure> {
        let scheduler = self
            .scheduler
            .clone()
            .or_else(|| entry.and_then(|e| e.scheduler.clone()));
        let Some(scheduler) = scheduler else {
            return Ok(None);
        };
        let tls = self.tls.load(entry)?;
        let functions = Functions::new(medlake_engine::cluster_functions());
        let sources = self
            .sources
            .or_else(|| entry.and_then(|e| e.sources))
            .unwrap_or(SourcesAt::Server);
        Cluster::new(&scheduler, tls, functions)
            .map(|c| Some(c.with_external_tables(sources == SourcesAt::Executors)))
            .map_err(|e| Failure::Usage(e.to_string()))
    }
}

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// The address executors and servers reach the scheduler at; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50050")]
    pub bind: std::net::SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    /// The scheduler: `ballista://host:port`.
    #[arg(long, value_name = "URL")]
    pub scheduler: String,
    /// Where this executor serves shuffle and result data (Arrow Flight); port 0 picks a
    /// free port. Its IP is what the scheduler and the other members dial.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50052")]
    pub bind: std::net::SocketAddr,
    /// Tasks at once (default: the machine's cores).
    #[arg(long, default_value_t = 0)]
    pub vcores: usize,
    /// Folder for shuffle files (default: a temporary folder, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The warehouse whose object store tasks read, with credentials from this process's
    /// environment (AZURE_*, AWS_*, GOOGLE_*), never from the plans; not needed for a folder.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", value_name = "URL")]
    pub warehouse: Option<String>,
    /// The servers' config file: its `[secrets]` and `[sources]` are what this executor
    /// scans external tables with (servers started with `--cluster-sources executors`);
    /// nothing else of it is used. Without it, external scans sent here fail.
    #[arg(long, env = "MEDLAKE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

fn functions() -> Functions {
    Functions::new(medlake_engine::cluster_functions())
}

async fn listen(
    addr: std::net::SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Usage(format!("the {what} cannot listen on {addr}: {e}")))
}

fn stopped(e: medlake_cluster::Error) -> Failure {
    eprintln!("error: {e}");
    Failure::Reported
}

/// `medlake scheduler`: until Ctrl-C or SIGTERM.
pub async fn scheduler(args: SchedulerArgs) -> Result<(), Failure> {
    let tls = args.tls.load(None)?;
    let listener = listen(args.bind, "scheduler").await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    println!("scheduler listening on ballista://{addr} (mutual TLS)");
    medlake_cluster::scheduler::serve(listener, tls, functions(), crate::doors::shutdown_signal())
        .await
        .map_err(stopped)
}

/// `medlake executor`: until Ctrl-C, SIGTERM, or the scheduler's connection ends.
pub async fn executor(args: ExecutorArgs) -> Result<(), Failure> {
    let tls = args.tls.load(None)?;
    let scheduler = match args.scheduler.strip_prefix("ballista://") {
        Some(rest) => format!("https://{rest}"),
        None => {
            return Err(Failure::Usage(format!(
                "--scheduler must be ballista://HOST:PORT, not {}",
                args.scheduler
            )));
        }
    };
    let mut stores = Vec::new();
    let mut root = None;
    if let Some(location) = &args.warehouse {
        let warehouse = medlake_lake::Warehouse::open(location).await.map_err(|e| {
            let shown = medlake_engine::redact_location(location);
            Failure::Usage(format!("the warehouse {shown}: {e}"))
        })?;
        if warehouse.url().scheme() != "file" {
            stores.push((warehouse.url().clone(), warehouse.object_store()));
        }
        root = Some(warehouse.url().clone());
    }
    // A temporary folder lives (and is removed) with this function.
    let (work_dir, _temporary) = match &args.work_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile::tempdir().map_err(|e| {
                Failure::Usage(format!("cannot make the executor's work folder: {e}"))
            })?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    let vcores = match args.vcores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listener = listen(args.bind, "executor").await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // As `medlake serve`: MEDLAKE_MEMORY_LIMIT, or half the machine's memory.
    let memory_limit = medlake_engine::runtime::RuntimeSettings::from_env()?
        .or_default_limit()
        .memory_limit;
    let sources = match &args.config {
        Some(path) => {
            let config = crate::config::Config::load(path).map_err(Failure::Usage)?;
            let mut policy = config.source_policy().map_err(Failure::Usage)?;
            // As a server's: never the warehouse, nor this executor's own files (other jobs'
            // shuffles, its cluster key), whatever a table's location says.
            policy.warehouse = root.clone();
            if let Some(folder) = root.as_ref().and_then(|u| u.to_file_path().ok()) {
                policy.forbidden_paths.push(folder);
            }
            policy
                .forbidden_paths
                .push(std::path::absolute(&work_dir).unwrap_or_else(|_| work_dir.clone()));
            for file in [&args.tls.ca, &args.tls.cert, &args.tls.key]
                .into_iter()
                .flatten()
            {
                if let Some(folder) = std::path::absolute(file)
                    .ok()
                    .and_then(|f| f.parent().map(Into::into))
                {
                    policy.forbidden_paths.push(folder);
                }
            }
            Some(medlake_cluster::Sources {
                registry: std::sync::Arc::new(crate::connectors::registry()),
                policy: std::sync::Arc::new(policy),
            })
        }
        None => None,
    };
    let options = medlake_cluster::executor::Options {
        scheduler,
        vcores,
        work_dir,
        stores,
        memory_limit,
        warehouse: root,
        sources,
    };
    println!("executor serving on {addr} with {vcores} task slot(s) (mutual TLS)");
    medlake_cluster::executor::serve(
        listener,
        options,
        tls,
        functions(),
        crate::doors::shutdown_signal(),
    )
    .await
    .map_err(stopped)
}
