//! What external tables may reach: the operator's allow-lists, checked when a table is
//! created ([`crate::Registry::define`]), when it is opened ([`crate::Registry::open`], every statement that names
//! it) and when a connection is made (the resolved address of every connection and redirect).
//!
//! A [`Policy`] is plain data. The engine puts one into DataFusion's session config
//! (`SessionConfig::with_extension(Arc<Policy>)`); [`Policy::of`] reads it back and falls back
//! to the strict [`Policy::default`] (nothing allowed) when a config has none.
//!
//! * Secrets: `${NAME}` resolves from [`Policy::secrets`] only (the config's `[secrets]`).
//! * Local paths (blob LOCATIONs, `ca_certificate`) must lie under one of
//!   [`Policy::allowed_paths`] after canonicalisation (symlinks followed, `..` resolved) and
//!   must neither lie under nor contain one of [`Policy::forbidden_paths`].
//! * Hosts: addresses that are not public (loopback, link-local and so cloud metadata,
//!   private, shared, unspecified, multicast, broadcast, documentation, reserved; IPv6 forms
//!   that embed one of those) are refused unless the host is in [`Policy::allowed_hosts`].
//! * Cloud identity: blob stores read the server's `AWS_*` / `AZURE_*` / `GOOGLE_*`
//!   environment and its managed identity only for LOCATIONs under
//!   [`Policy::ambient_identity`]; no blob LOCATION may lie in the warehouse's own
//!   container, bucket or folder ([`Policy::warehouse`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionConfig;
use medlake_auth::{Secret, SecretStore};
use url::Url;

use crate::error::{Error, Result};

/// The operator's rules for external tables. `Debug` names secrets, never their values.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The secrets `${NAME}` may reference (the config's `[secrets]`).
    pub secrets: SecretStore,
    /// Resolve a `${NAME}` the store lacks from the process environment. Only
    /// [`Policy::permissive`] (the local CLI, where the user owns the environment) sets it;
    /// `medlake serve` never does.
    pub secrets_from_environment: bool,
    /// Local LOCATIONs must lie under one of these (`/`: anywhere).
    pub allowed_paths: Vec<PathBuf>,
    /// Never readable, even under an allowed path: the warehouse root, the spill folder, the
    /// TLS and secret-file folders. A LOCATION that contains one is refused too.
    pub forbidden_paths: Vec<PathBuf>,
    /// Hosts that may resolve to non-public addresses: names (`db.hospital.local`,
    /// `*.hospital.local`), IP addresses or CIDR blocks (`10.20.0.0/16`); `*`: any host.
    pub allowed_hosts: Vec<String>,
    /// Location prefixes (`az://account/container`, `s3://bucket/prefix`, `gs://bucket`) that
    /// may use the server's own cloud identity; `*`: any location.
    pub ambient_identity: Vec<String>,
    /// The warehouse: no blob LOCATION may lie in its container, bucket or folder.
    pub warehouse: Option<Url>,
    /// Where each bound secret may be sent (the config's `[secrets] NAME = { ...,
    /// locations = [...] }`): URL prefixes that the LOCATION, and every URL in the OPTIONS, of
    /// a definition that references the secret must lie under. A secret not listed here may go
    /// wherever a definition points (its `USE` grant is the only limit).
    pub secret_locations: std::collections::BTreeMap<String, Vec<String>>,
}

impl Policy {
    /// The strict policy: no secret, no local path, no private host, no ambient identity.
    pub fn strict() -> Self {
        Self::default()
    }

    /// For the local CLI and tests: any path except the forbidden ones, any host, the
    /// server's identity everywhere, and `${NAME}` from the store or else the environment.
    /// `medlake serve` never uses it.
    pub fn permissive() -> Self {
        Self {
            secrets: SecretStore::default(),
            secrets_from_environment: true,
            allowed_paths: vec![PathBuf::from("/")],
            forbidden_paths: Vec::new(),
            allowed_hosts: vec!["*".into()],
            ambient_identity: vec!["*".into()],
            warehouse: None,
            secret_locations: Default::default(),
        }
    }

    /// This policy with one more secret in its store.
    pub fn with_secret(mut self, name: &str, value: &str) -> Self {
        let mut all: Vec<(String, Secret)> = self
            .secrets
            .names()
            .filter(|n| *n != name)
            .filter_map(|n| Some((n.to_string(), self.secrets.get(n)?.clone())))
            .collect();
        all.push((name.to_string(), Secret::new(value)));
        self.secrets = SecretStore::new(all);
        self
    }

    /// The policy in a session's config; the strict default when it has none.
    pub fn of(config: &SessionConfig) -> Arc<Policy> {
        config
            .get_extension::<Policy>()
            .unwrap_or_else(|| Arc::new(Policy::default()))
    }

    /// The value of secret `name`, if this policy lets sources use it.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        if let Some(secret) = self.secrets.get(name) {
            return Some(secret.clone());
        }
        if self.secrets_from_environment {
            return std::env::var(name).ok().map(Secret::new);
        }
        None
    }

    /// Whether every host may be reached (no address check at all).
    pub fn any_host(&self) -> bool {
        self.allowed_hosts.iter().any(|h| h.trim() == "*")
    }

    fn refused(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Refused {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Checks a local path that a source will read (a folder or a file) and returns it
    /// canonical: it must exist, lie under an allowed path and neither lie under nor contain a
    /// forbidden one.
    pub fn check_path(&self, what: &str, path: &Path) -> Result<PathBuf> {
        let canonical = path.canonicalize().map_err(|e| Error::LocationNotFound {
            location: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut forbidden: Vec<PathBuf> = self
            .forbidden_paths
            .iter()
            .map(|p| canonical_or_normal(p))
            .collect();
        if let Some(url) = &self.warehouse
            && url.scheme() == "file"
            && let Ok(root) = url.to_file_path()
        {
            forbidden.push(canonical_or_normal(&root));
        }
        for f in &forbidden {
            if canonical.starts_with(f) {
                return Err(Self::refused(
                    format!("{what} '{}'", path.display()),
                    "it lies in a folder external tables may never read (the warehouse, the spill folder, TLS keys or secret files)",
                ));
            }
            if f.starts_with(&canonical) {
                return Err(Self::refused(
                    format!("{what} '{}'", path.display()),
                    "it contains a folder external tables may never read (the warehouse, the spill folder, TLS keys or secret files)",
                ));
            }
        }
        let allowed = self
            .allowed_paths
            .iter()
            .any(|a| canonical.starts_with(canonical_or_normal(a)));
        if !allowed {
            return Err(Self::refused(
                format!("{what} '{}'", path.display()),
                if self.allowed_paths.is_empty() {
                    "the server allows no local paths ([sources] allowed_paths is empty)"
                        .to_string()
                } else {
                    "it is not under one of the server's [sources] allowed_paths".to_string()
                },
            ));
        }
        Ok(canonical)
    }

    /// Whether `host` (as written in a URL, brackets allowed) is named in `allowed_hosts`,
    /// by name, wildcard, address or CIDR block.
    fn host_listed(&self, host: &str, ip: Option<IpAddr>) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.allowed_hosts.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            if entry == "*" || entry == host {
                return true;
            }
            if let Some(suffix) = entry.strip_prefix("*.") {
                return host.ends_with(&format!(".{suffix}"));
            }
            let Some(ip) = ip else { return false };
            match entry.parse::<IpAddr>() {
                Ok(listed) => canonical_ip(listed) == canonical_ip(ip),
                Err(_) => cidr_contains(&entry, ip),
            }
        })
    }

    /// Checks one address `host` resolved to.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<()> {
        if is_public(ip) || self.host_listed(host, Some(ip)) {
            return Ok(());
        }
        Err(Self::refused(
            format!("host '{host}'"),
            format!(
                "it resolves to {ip}, a {} address; list the host in the server's [sources] allowed_hosts to reach it",
                describe(ip)
            ),
        ))
    }

    /// The addresses of `host` that may be reached; an error when none may.
    pub fn vet(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>> {
        let mut vetted = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            match self.check_ip(host, addr.ip()) {
                Ok(()) => vetted.push(addr),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        match (vetted.is_empty(), first_refusal) {
            // One refused address is enough: a name that resolves to a public and a private
            // address is what DNS rebinding looks like.
            (_, Some(refusal)) => Err(refusal),
            (true, None) => Err(Error::Connect {
                server: host.to_string(),
                message: "the name resolves to no address".into(),
            }),
            (false, None) => Ok(vetted),
        }
    }

    /// Checks a URL's host when it is an IP address (those skip the resolver); names are
    /// checked when they are resolved.
    pub fn check_literal_host(&self, url: &Url) -> Result<()> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and checks every address, for clients whose connections medlake does
    /// not make itself (Cosmos DB's SDK): a check before connecting, not at connect time.
    pub async fn check_host(&self, host: &str, port: u16) -> Result<()> {
        if self.any_host() {
            return Ok(());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| Error::Connect {
                server: format!("{host}:{port}"),
                message: format!("cannot resolve the name: {e}"),
            })?;
        self.vet(bare, addrs).map(|_| ())
    }

    /// Checks that a definition sends each secret it references only where the secret is
    /// bound ([`Policy::secret_locations`]): its LOCATION and every URL among its option
    /// values (token endpoints, file origins, endpoints; lists split on commas and spaces) must
    /// lie under one of the secret's locations. URLs are compared parsed (scheme, host, port,
    /// then the path by whole segments), so `https://ehr@evil.example/` or
    /// `https://ehr.example.evil/` is not under `https://ehr.example`. A refusal names the
    /// secret and the destination, never a value.
    pub fn check_secret_destinations(
        &self,
        location: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let bound: Vec<(&str, &Vec<String>)> = options
            .values()
            .filter_map(|v| crate::secret::reference(v))
            .filter_map(|name| Some((name, self.secret_locations.get(name)?)))
            .collect();
        if bound.is_empty() {
            return Ok(());
        }
        let destinations = destinations(location, options);
        for (name, allowed) in bound {
            for destination in &destinations {
                let under = allowed
                    .iter()
                    .filter_map(|prefix| Url::parse(prefix.trim()).ok())
                    .any(|prefix| url_under(destination, &prefix));
                if !under {
                    return Err(Self::refused(
                        format!("secret {name}"),
                        format!(
                            "it may be sent only under its [secrets] locations, and this table sends it to {}",
                            origin_of(destination)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `location` may use the server's own cloud identity.
    pub fn ambient_allowed(&self, location: &str) -> bool {
        self.ambient_identity.iter().any(|prefix| {
            let prefix = prefix.trim();
            if prefix == "*" {
                return true;
            }
            let prefix = prefix.trim_end_matches('/');
            !prefix.is_empty()
                && location
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// Where a definition sends what it holds: its LOCATION and every absolute URL (with a
/// host) among its option values, lists split on commas and whitespace. A LOCATION that is no
/// URL (a local path) sends nothing anywhere.
fn destinations(location: &str, options: &std::collections::BTreeMap<String, String>) -> Vec<Url> {
    std::iter::once(location)
        .chain(options.values().map(String::as_str))
        .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|v| v.contains("://"))
        .filter_map(|v| Url::parse(v).ok())
        .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
        .collect()
}

/// Whether `url` lies under `prefix`: same scheme, host and port, and the prefix's path is a
/// whole-segment prefix of the URL's.
fn url_under(url: &Url, prefix: &Url) -> bool {
    let host = |u: &Url| u.host_str().map(str::to_ascii_lowercase);
    if url.scheme() != prefix.scheme()
        || host(url) != host(prefix)
        || host(url).is_none()
        || url.port_or_known_default() != prefix.port_or_known_default()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return false;
    }
    let base = prefix.path().trim_end_matches('/');
    let path = url.path();
    base.is_empty()
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `scheme://host[:port]` of a URL, for messages (no path, query or credentials).
fn origin_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => url.scheme().to_string(),
    }
}

/// `path` canonical when it exists, else made absolute and normalised lexically.
fn canonical_or_normal(path: &Path) -> PathBuf {
    if let Ok(c) = path.canonicalize() {
        return c;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// An IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) as that IPv4
/// address; anything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    match s {
        // ::ffff:a.b.c.d (mapped)
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // ::a.b.c.d (compatible, deprecated); not :: and ::1
        [0, 0, 0, 0, 0, 0, _, _] if !matches!(v6.segments()[6..], [0, 0] | [0, 1]) => Some(tail),
        // 64:ff9b::a.b.c.d (NAT64 well-known prefix) and 64:ff9b:1::/48 (local-use NAT64)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 1, _, _, _, _, _] => Some(tail),
        // 2002:AABB:CCDD::/48 (6to4)
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            (a & 0xff) as u8,
            (b >> 8) as u8,
            (b & 0xff) as u8,
        )),
        _ => None,
    }
}

/// Whether an address is on the public internet (what any external table may reach).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0 // "this network"
                || a >= 240 // reserved
                || (a == 100 && (64..128).contains(&b)) // shared (CGNAT) 100.64/10
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19))) // benchmarking
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || first == 0x0100) // discard-only 100::/64
        }
    }
}

fn describe(ip: IpAddr) -> &'static str {
    match canonical_ip(ip) {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local (cloud metadata)",
        IpAddr::V4(v4) if v4.is_private() => "private",
        IpAddr::V4(v4) if v4.is_unspecified() => "unspecified",
        IpAddr::V4(v4) if v4.is_multicast() => "multicast",
        IpAddr::V4(v4) if v4.is_broadcast() => "broadcast",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V6(v6) if v6.is_unspecified() => "unspecified",
        IpAddr::V6(v6) if v6.is_multicast() => "multicast",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link-local",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "private (unique local)",
        _ => "non-public",
    }
}

/// Whether `cidr` (`10.0.0.0/8`, `fd00::/8`) contains `ip`.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.trim().parse::<IpAddr>(), bits.trim().parse::<u32>()) else {
        return false;
    };
    match (canonical_ip(net), canonical_ip(ip)) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// The refusal inside an error chain (a resolver's or a connector's, wrapped by reqwest,
/// hyper or object_store), if there is one.
pub fn find_refusal(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(found @ Error::Refused { .. }) = err.downcast_ref::<Error>() {
            return Some(found.clone());
        }
        current = err.source();
    }
    None
}

/// A reqwest resolver that refuses non-public addresses of hosts the policy does not list:
/// the check happens on the addresses the connection will use (no DNS rebinding).
#[derive(Debug, Clone)]
pub struct VettingResolver {
    pub policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for VettingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let vetted = policy.vet(&host, addrs)?;
            Ok(Box::new(vetted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A reqwest client builder that resolves through [`VettingResolver`], re-checks every
/// redirect hop whose host is an address, and ignores the environment's proxies (a proxy
/// would resolve the target itself) unless the policy allows any host.
pub fn vetted_client(policy: &Arc<Policy>) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder();
    if !policy.any_host() {
        builder = builder.no_proxy().dns_resolver(Arc::new(VettingResolver {
            policy: policy.clone(),
        }));
    }
    builder
}

/// Whether a redirect to `url` may be followed: IP-literal hosts skip the resolver, so they
/// are checked here.
pub fn redirect_allowed(policy: &Policy, url: &Url) -> bool {
    policy.any_host() || policy.check_literal_host(url).is_ok()
}

/// Connects a TCP stream to `host:port` through vetted addresses only (SQL Server).
pub async fn connect_tcp(policy: &Policy, host: &str, port: u16) -> Result<tokio::net::TcpStream> {
    let server = format!("{host}:{port}");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| Error::Connect {
            server: server.clone(),
            message: e.to_string(),
        })?
        .collect();
    let vetted = if policy.any_host() {
        addrs
    } else {
        policy.vet(bare, addrs)?
    };
    let mut last = None;
    for addr in vetted {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Connect {
        server,
        message: last.map_or_else(|| "no address to connect to".into(), |e| e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict_with_hosts(hosts: &[&str]) -> Policy {
        Policy {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn bound_secrets_go_only_under_their_locations() {
        let mut p = Policy::default()
            .with_secret("FHIR_KEY", "k")
            .with_secret("FREE", "f");
        p.secret_locations.insert(
            "FHIR_KEY".into(),
            vec![
                "https://ehr.hospital.example/fhir".into(),
                "https://auth.hospital.example:8443/".into(),
            ],
        );
        let options = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let key = ("private_key", "${FHIR_KEY}");
        let ok = |location: &str, more: &[(&str, &str)]| {
            let mut o = options(more);
            o.insert(key.0.into(), key.1.into());
            p.check_secret_destinations(location, &o)
        };
        assert!(ok("https://ehr.hospital.example/fhir", &[]).is_ok());
        assert!(ok("https://EHR.hospital.example/fhir/R4/", &[]).is_ok());
        assert!(
            ok(
                "https://ehr.hospital.example/fhir",
                &[("token_url", "https://auth.hospital.example:8443/token")]
            )
            .is_ok()
        );
        for (location, more) in [
            ("https://attacker.example/fhir", &[][..]),
            ("https://ehr.hospital.example/fhirx", &[]),
            ("https://ehr.hospital.example/", &[]),
            ("http://ehr.hospital.example/fhir", &[]),
            ("https://ehr.hospital.example:444/fhir", &[]),
            ("https://ehr.hospital.example@attacker.example/fhir", &[]),
            ("https://ehr.hospital.example.attacker.example/fhir", &[]),
            (
                "https://ehr.hospital.example/fhir",
                &[("token_url", "https://auth.hospital.example/token")][..],
            ),
            (
                "https://ehr.hospital.example/fhir",
                &[(
                    "file_origins",
                    "https://auth.hospital.example:8443, https://files.attacker.example",
                )][..],
            ),
        ] {
            let err = ok(location, more).expect_err(location);
            assert_eq!(err.sqlstate(), "42501", "{location}");
            assert!(err.to_string().contains("FHIR_KEY"), "{err}");
            assert!(!err.to_string().contains("\"k\""), "{err}");
        }
        // An unbound secret goes wherever the table points; no secret, no check.
        let free = options(&[("bearer_token", "${FREE}")]);
        assert!(
            p.check_secret_destinations("https://anywhere.example", &free)
                .is_ok()
        );
        assert!(
            p.check_secret_destinations("https://anywhere.example", &options(&[]))
                .is_ok()
        );
    }

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "20.60.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allowed_hosts_match_names_wildcards_addresses_and_blocks() {
        let p = strict_with_hosts(&["db.hospital.local", "*.lab.local", "10.20.0.0/16", "::1"]);
        let private: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(p.check_ip("db.hospital.local", private).is_ok());
        assert!(p.check_ip("DB.Hospital.Local.", private).is_ok());
        assert!(p.check_ip("x.lab.local", private).is_ok());
        assert!(p.check_ip("lab.local.evil", private).is_err());
        assert!(p.check_ip("other", "10.20.3.4".parse().unwrap()).is_ok());
        assert!(p.check_ip("other", "10.21.3.4".parse().unwrap()).is_err());
        assert!(p.check_ip("localhost", "::1".parse().unwrap()).is_ok());
        assert!(
            p.check_ip("localhost", "127.0.0.1".parse().unwrap())
                .is_err()
        );
        let e = p
            .check_ip("metadata", "169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
        assert!(e.to_string().contains("link-local"), "{e}");
        // A name with one private address among public ones is refused (rebinding).
        let mixed: Vec<SocketAddr> = vec![
            "8.8.8.8:443".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        ];
        assert!(p.vet("evil.example", mixed).is_err());
        assert!(
            Policy::permissive()
                .check_ip("x", "127.0.0.1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn paths_must_be_allowed_and_never_forbidden() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("landing");
        let warehouse = root.path().join("landing/wh");
        std::fs::create_dir_all(allowed.join("csv")).unwrap();
        std::fs::create_dir_all(&warehouse).unwrap();
        let p = Policy {
            allowed_paths: vec![allowed.clone()],
            forbidden_paths: vec![warehouse.clone()],
            ..Policy::default()
        };
        assert!(p.check_path("LOCATION", &allowed.join("csv")).is_ok());
        // `..` cannot escape.
        let escape = allowed.join("csv/../../");
        assert_eq!(
            p.check_path("LOCATION", &escape).unwrap_err().sqlstate(),
            "42501"
        );
        assert!(p.check_path("LOCATION", Path::new("/etc")).is_err());
        // Inside the warehouse, or containing it.
        assert!(p.check_path("LOCATION", &warehouse).is_err());
        assert!(p.check_path("LOCATION", &allowed).is_err());
        // A symlink out of the allowed folder is followed, then refused.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", allowed.join("etc")).unwrap();
            assert!(p.check_path("LOCATION", &allowed.join("etc")).is_err());
        }
        // Strict: nothing.
        assert!(Policy::default().check_path("LOCATION", &allowed).is_err());
        // Permissive: anything but the forbidden folders.
        let permissive = Policy {
            forbidden_paths: vec![warehouse.clone()],
            ..Policy::permissive()
        };
        assert!(
            permissive
                .check_path("LOCATION", &allowed.join("csv"))
                .is_ok()
        );
        assert!(
            permissive
                .check_path("LOCATION", &warehouse.join("."))
                .is_err()
        );
    }

    #[test]
    fn ambient_identity_matches_whole_segments() {
        let p = Policy {
            ambient_identity: vec!["az://acct/landing".into()],
            ..Policy::default()
        };
        assert!(p.ambient_allowed("az://acct/landing"));
        assert!(p.ambient_allowed("az://acct/landing/scans/"));
        assert!(!p.ambient_allowed("az://acct/landing2/"));
        assert!(!p.ambient_allowed("az://acct/"));
        assert!(Policy::permissive().ambient_allowed("s3://anything/"));
        assert!(!Policy::default().ambient_allowed("s3://anything/"));
    }

    #[test]
    fn debug_shows_no_secret_value() {
        let p = Policy::default().with_secret("EHR_PASSWORD", "hunter2");
        let text = format!("{p:?}");
        assert!(
            text.contains("EHR_PASSWORD") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(p.secret("EHR_PASSWORD").unwrap().expose(), "hunter2");
        assert!(p.secret("PATH").is_none());
    }
}
