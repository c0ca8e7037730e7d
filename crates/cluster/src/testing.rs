//! A cluster on loopback for tests (feature `test-support`): a test CA, a scheduler and
//! executors on port 0 in this process, stopped when the [`LocalCluster`] is dropped.

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{Cluster, ClusterTls, Functions, executor, scheduler};

/// A certificate authority for one test cluster.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a CA certificate");
        Self { cert, key }
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> Vec<u8> {
        self.cert.pem().into_bytes()
    }

    /// A member's CA, certificate and key (PEM): for 127.0.0.1 and localhost, usable as
    /// server and as client.
    pub fn member_pem(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        self.member_pem_as(None)
    }

    /// [`Self::member_pem`] whose subject names `role` (`medlake-server`, ...) as its
    /// organizational unit ([`crate::guard::Role`]).
    pub fn member_pem_as(&self, role: Option<&str>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        if let Some(role) = role {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, role);
        }
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("a member key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a member certificate");
        (
            self.pem(),
            cert.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        )
    }

    /// A member's TLS.
    pub fn member(&self) -> ClusterTls {
        self.member_as(None)
    }

    /// A member's TLS with a role certificate.
    pub fn member_as(&self, role: Option<&str>) -> ClusterTls {
        let (ca, cert, key) = self.member_pem_as(role);
        ClusterTls::from_pem(ca, cert, key).expect("PEM from rcgen")
    }
}

/// A scheduler and executors in this process; they stop when this is dropped.
pub struct LocalCluster {
    pub ca: TestCa,
    /// `https://127.0.0.1:PORT`.
    pub scheduler: String,
    stops: Vec<oneshot::Sender<()>>,
    /// Whether members hold role certificates.
    roles: bool,
    _work: tempfile::TempDir,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

impl LocalCluster {
    /// A scheduler and `executors` executors of two task slots each, with `functions`.
    pub async fn start(executors: usize, functions: Functions) -> Self {
        Self::start_with(executors, functions, false, None).await
    }

    /// [`Self::start`] whose executors scan external tables with `sources` (their own
    /// connectors, secrets and source policy).
    pub async fn start_with_sources(
        executors: usize,
        functions: Functions,
        sources: crate::Sources,
    ) -> Self {
        Self::start_with(executors, functions, false, Some(sources)).await
    }

    /// [`Self::start`] with role certificates: `medlake-scheduler`, `medlake-executor`, and
    /// `medlake-server` for [`Self::client`].
    pub async fn start_with_roles(executors: usize, functions: Functions) -> Self {
        Self::start_with(executors, functions, true, None).await
    }

    async fn start_with(
        executors: usize,
        functions: Functions,
        roles: bool,
        sources: Option<crate::Sources>,
    ) -> Self {
        let role = |r: &'static str| roles.then_some(r);
        let ca = TestCa::new("medlake test cluster CA");
        let mut stops = Vec::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let scheduler = format!("https://{}", listener.local_addr().expect("an address"));
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        let tls = ca.member_as(role("medlake-scheduler"));
        let f = functions.clone();
        tokio::spawn(async move {
            let served = scheduler::serve(listener, tls, f, async move {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = served {
                eprintln!("test scheduler: {e}");
            }
        });
        let work = tempfile::tempdir().expect("a work folder");
        for i in 0..executors {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let options = executor::Options {
                scheduler: scheduler.clone(),
                vcores: 2,
                work_dir: work.path().join(format!("executor{i}")),
                stores: Vec::new(),
                memory_limit: Some(1 << 30),
                warehouse: None,
                sources: sources.clone(),
            };
            let tls = ca.member_as(role("medlake-executor"));
            let f = functions.clone();
            tokio::spawn(async move {
                let served = executor::serve(listener, options, tls, f, async move {
                    let _ = stopped.await;
                })
                .await;
                if let Err(e) = served {
                    eprintln!("test executor {i}: {e}");
                }
            });
        }
        // Executors register with the scheduler on their first poll.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Self {
            ca,
            scheduler,
            stops,
            roles,
            _work: work,
        }
    }

    /// A server's way to this cluster.
    pub fn client(&self, functions: Functions) -> Cluster {
        let address = self.scheduler.replace("https://", "ballista://");
        let tls = self.ca.member_as(self.roles.then_some("medlake-server"));
        Cluster::new(&address, tls, functions).expect("a valid address")
    }
}
