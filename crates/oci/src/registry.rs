//! `docker://` registries, through `oci-client` (on a small tokio runtime this module owns; the
//! rest of the project is synchronous).
//!
//! Pull: the manifest (an image index is followed to the `--platform` manifest) and the config
//! are fetched when the image is opened; layers only when something reads their bytes. Every
//! blob lands in a content-addressed cache (`<cache>/blobs/sha256/<hex>`, a [`BlobStore`] with a
//! [`BlobFetcher`]): downloaded into a temporary file while its digest and size are checked,
//! then renamed into place, so a second build never downloads it again and nothing unverified is
//! ever under a blob's name.
//!
//! Push: for each layer, a HEAD first (the registry may have it), then a cross-repository mount
//! when the layer comes from another repository of the same registry, and only then an upload,
//! streamed from the file in 1 MiB chunks (monolithic PUT). The config follows, and the manifest
//! is pushed by tag last, so an interrupted push never leaves the tag pointing at anything new.
//!
//! Faults: connection errors, 429 and 5xx answers are retried with exponential backoff (5
//! attempts, 0.5 s doubling: ~8 s); 401/403, unknown images and digest mismatches fail at once
//! with one-line errors naming the registry, repository and digest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::{RegistryToken, RegistryTokenType};
use oci_client::{Reference, RegistryOperation};
use oci_spec::image::{Descriptor, MediaType};
use serde_json::Value;
use sha2::Digest as _;

use crate::auth::{self, Credentials};
use crate::digest::Digest;
use crate::error::{OciError, Result};
use crate::layout::{BlobFetcher, BlobStore, Image, resolve_descriptor};
use crate::media;
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::{ImageRef, RegistryRef};
use crate::store::StoreOptions;

/// Attempts per operation for connection errors, 429 and 5xx.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Upload chunk: what is in memory per layer being pushed.
const UPLOAD_CHUNK: usize = 1 << 20;
/// Ask for both OCI and Docker v2 types: a registry asked only for OCI types may down-convert a
/// Docker image to schema 1.
const MANIFEST_TYPES: &[&str] =
    &[media::OCI_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST, media::DOCKER_MANIFEST_LIST];

pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cannot start the tokio runtime")
    })
}

/// Whether `registry` (`host[:port]`) may be reached over plain HTTP: loopback hosts, and those
/// named with `--insecure-registry` (as `host` or `host:port`).
pub fn allows_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback || insecure.iter().map(|i| auth::normalize(i)).any(|i| i == registry.to_ascii_lowercase() || i == host)
}

fn host_of(registry: &str) -> String {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host.to_ascii_lowercase()
}

/// One registry: an `oci-client` client with its credentials. Shared by every image of the
/// registry in this process (so tokens and connections are reused).
pub struct RegistryClient {
    registry: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    credentials: auth::Resolved,
    plain_http: bool,
    /// Proxy settings, for the few requests made without `oci-client` (mount tokens).
    proxies: Vec<reqwest::Proxy>,
    stall_timeout: Duration,
}

thread_local! {
    /// When the request running on this thread last moved a byte. The runtime is
    /// current-thread, so the request, its body stream and the watchdog all run here.
    static LAST_PROGRESS: std::cell::Cell<std::time::Instant> = std::cell::Cell::new(std::time::Instant::now());
}

/// Records that the current transfer moved data (see [`RegistryClient::run`]'s watchdog).
fn touch() {
    LAST_PROGRESS.with(|t| t.set(std::time::Instant::now()));
}

/// Resolves when no progress was recorded for `stall`: the answer to a registry that keeps a
/// connection open without sending (or reading) anything.
async fn stalled(stall: Duration) -> Duration {
    let tick = (stall / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let idle = LAST_PROGRESS.with(|t| t.get()).elapsed();
        if idle >= stall {
            return idle;
        }
    }
}

fn client_for(registry: &str, opts: &StoreOptions) -> Result<Arc<RegistryClient>> {
    static CLIENTS: Mutex<BTreeMap<String, Arc<RegistryClient>>> = Mutex::new(BTreeMap::new());
    let plain_http = allows_plain_http(registry, &opts.insecure_registries);
    let stall_timeout = opts.stall_timeout.unwrap_or(crate::store::DEFAULT_STALL_TIMEOUT);
    let key = format!("{registry} {plain_http} {}", stall_timeout.as_millis());
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let credentials = auth::Sources::from_env().resolve(registry)?;
    let auth = match &credentials.credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
        Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
    };
    tracing::debug!("registry {registry}: credentials from {}, plain HTTP: {plain_http}", credentials.source);
    let env = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
    let loopback = plain_http && !opts.insecure_registries.iter().any(|i| auth::normalize(i) == registry);
    let config = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::HttpsExcept(vec![registry.to_string()])
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: true,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("ext-extend/", env!("CARGO_PKG_VERSION")),
        https_proxy: if loopback { None } else { env(&["HTTPS_PROXY", "https_proxy"]) },
        http_proxy: if loopback { None } else { env(&["HTTP_PROXY", "http_proxy"]) },
        no_proxy: env(&["NO_PROXY", "no_proxy"]),
        // Never the TLS stack's own lookup of system roots: it fails where the image has no
        // CA bundle, even for plain-HTTP registries (see tls.rs).
        tls_certs_only: crate::tls::trust_roots()
            .certificates
            .iter()
            .map(|der| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Der,
                data: der.clone(),
            })
            .collect(),
        ..ClientConfig::default()
    };
    let mut proxies = Vec::new();
    if let Some(p) = config.https_proxy.as_deref().and_then(|p| reqwest::Proxy::https(p).ok()) {
        proxies.push(p.no_proxy(reqwest::NoProxy::from_string(config.no_proxy.as_deref().unwrap_or_default())));
    }
    if let Some(p) = config.http_proxy.as_deref().and_then(|p| reqwest::Proxy::http(p).ok()) {
        proxies.push(p.no_proxy(reqwest::NoProxy::from_string(config.no_proxy.as_deref().unwrap_or_default())));
    }
    let client = oci_client::Client::try_from(config)
        .map_err(|e| OciError::Registry { registry: registry.into(), message: one_line(&e.to_string()) })?;
    let c = Arc::new(RegistryClient {
        registry: registry.into(),
        client,
        auth,
        credentials,
        plain_http,
        proxies,
        stall_timeout,
    });
    // oci-client looks credentials up by the registry it really talks to (docker.io is
    // index.docker.io).
    let resolved = c.reference("library/x").resolve_registry().to_string();
    runtime().block_on(c.client.store_auth_if_needed(&resolved, &c.auth));
    clients.insert(key, c.clone());
    Ok(c)
}

/// How an attempt failed: worth retrying, or final.
enum Failure {
    Transient(String),
    Fatal(OciError),
}

impl From<OciError> for Failure {
    fn from(e: OciError) -> Self {
        Failure::Fatal(e)
    }
}

/// What a request was about, so a 404 becomes the right message.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Manifest(&'a str),
    Blob(&'a Digest),
    Other,
}

impl RegistryClient {
    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn reference(&self, repository: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), repository.into(), "latest".into())
    }

    /// Runs `op` until it succeeds, fails for good, or has failed transiently [`ATTEMPTS`] times.
    fn run<T, Fut>(&self, mut op: impl FnMut() -> Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            touch();
            let attempt_result = runtime().block_on(async {
                let op = std::pin::pin!(op());
                let watchdog = std::pin::pin!(stalled(self.stall_timeout));
                match futures_util::future::select(op, watchdog).await {
                    futures_util::future::Either::Left((result, _)) => result,
                    futures_util::future::Either::Right((idle, _)) => Err(Failure::Transient(format!(
                        "the transfer stalled (no data for {:.0}s)",
                        idle.as_secs_f64()
                    ))),
                }
            });
            match attempt_result {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) => {
                    if attempt >= ATTEMPTS || crate::cleanup::interrupted().is_some() {
                        return Err(OciError::RegistryUnreachable {
                            registry: self.registry.clone(),
                            attempts: attempt,
                            reason,
                        });
                    }
                    tracing::warn!(
                        "registry {}: {reason}; retrying in {:.1}s (attempt {attempt} of {ATTEMPTS})",
                        self.registry,
                        delay.as_secs_f64()
                    );
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// Sorts an `oci-client` error into retry or a final, one-line [`OciError`].
    fn classify(&self, e: OciDistributionError, repository: &str, subject: Subject<'_>) -> Failure {
        let status = status_of(&e);
        let registry = self.registry.clone();
        match status {
            Some(401) | Some(403) => Failure::Fatal(OciError::RegistryAuth {
                registry,
                repository: repository.into(),
                reason: if status == Some(401) { "authentication failed" } else { "access denied" },
                hint: self.credentials.hint(),
            }),
            Some(404) => Failure::Fatal(match subject {
                Subject::Manifest(reference) => OciError::ImageNotFound {
                    registry,
                    repository: repository.into(),
                    reference: if reference.starts_with("sha256:") {
                        format!("@{reference}")
                    } else {
                        format!(":{reference}")
                    },
                },
                Subject::Blob(d) => {
                    OciError::Registry { registry, message: format!("blob {d} is not in repository {repository}") }
                }
                Subject::Other => OciError::Registry { registry, message: format!("{repository}: {}", describe(&e)) },
            }),
            // 429s come with any error body (distribution sends TOOMANYREQUESTS, others UNKNOWN);
            // oci-client keeps only the body's codes, so UNKNOWN is retried like a 429 or 5xx.
            Some(429) => Failure::Transient(format!("too many requests ({})", describe(&e))),
            Some(s) if s >= 500 => Failure::Transient(describe(&e)),
            Some(_) => {
                Failure::Fatal(OciError::Registry { registry, message: format!("{repository}: {}", describe(&e)) })
            }
            None => match &e {
                OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
                    Failure::Transient(innermost(&e))
                }
                OciDistributionError::DigestError(d) => {
                    Failure::Fatal(OciError::Registry { registry, message: format!("{repository}: {d}") })
                }
                _ => {
                    Failure::Fatal(OciError::Registry { registry, message: format!("{repository}: {}", describe(&e)) })
                }
            },
        }
    }

    /// GETs a manifest (by tag or digest); the body is checked against the registry's digest
    /// header and against `reference` when it is a digest.
    fn get_manifest(&self, repository: &str, reference: &str) -> Result<Vec<u8>> {
        let r = if reference.starts_with("sha256:") {
            Reference::with_digest(self.registry.clone(), repository.into(), reference.into())
        } else {
            Reference::with_tag(self.registry.clone(), repository.into(), reference.into())
        };
        let r = &r;
        self.run(|| async move {
            match self.client.pull_manifest_raw(r, &self.auth, MANIFEST_TYPES).await {
                Ok((body, _)) => Ok(body.to_vec()),
                Err(OciDistributionError::DigestError(DigestError::VerificationError { expected, actual })) => {
                    Err(Failure::Fatal(OciError::RemoteDigestMismatch {
                        digest: expected.parse()?,
                        actual: actual.parse()?,
                        origin: format!("{}/{repository}", self.registry),
                    }))
                }
                Err(e) => Err(self.classify(e, repository, Subject::Manifest(reference))),
            }
        })
    }

    /// Downloads a blob into `dest`, checking size and digest while it streams.
    fn download_blob(&self, repository: &str, digest: &Digest, size: Option<u64>, dest: &Path) -> Result<()> {
        let origin = format!("{}/{repository}", self.registry);
        let r = &self.reference(repository);
        let origin = &origin;
        self.run(|| async move {
            let file = File::create(dest).map_err(OciError::io(dest))?;
            let desc = OciDescriptor {
                digest: digest.to_string(),
                size: size.unwrap_or_default() as i64,
                media_type: "application/octet-stream".into(),
                ..OciDescriptor::default()
            };
            let mut stream = self
                .client
                .pull_blob_stream(r, &desc)
                .await
                .map_err(|e| self.classify(e, repository, Subject::Blob(digest)))?;
            let progress =
                Progress::new("pulled", format!("{} from {origin}", digest.short()), size.or(stream.content_length));
            let mut out = BufWriter::with_capacity(UPLOAD_CHUNK, file);
            let mut hasher = sha2::Sha256::new();
            let mut received = 0u64;
            let size_error = |actual| OciError::RemoteSizeMismatch {
                digest: digest.clone(),
                expected: size.unwrap_or_default(),
                actual,
                origin: origin.clone(),
            };
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        received += bytes.len() as u64;
                        touch();
                        if size.is_some_and(|s| received > s) {
                            return Err(size_error(received).into());
                        }
                        hasher.update(&bytes);
                        out.write_all(&bytes).map_err(OciError::io(dest))?;
                        progress.inc(bytes.len() as u64);
                    }
                    // oci-client checks the digest at the end too; ours names both digests.
                    Err(e) if e.get_ref().is_some_and(|i| i.is::<DigestError>()) => break,
                    Err(e) => return Err(Failure::Transient(innermost(&e))),
                }
            }
            let actual = Digest::from_hasher(hasher);
            if size.is_some_and(|s| s != received) {
                return Err(size_error(received).into());
            }
            if actual != *digest {
                return Err(
                    OciError::RemoteDigestMismatch { digest: digest.clone(), actual, origin: origin.clone() }.into()
                );
            }
            let file = out.into_inner().map_err(|e| OciError::Io { path: dest.into(), source: e.into_error() })?;
            file.sync_all().map_err(OciError::io(dest))?;
            progress.finish();
            Ok(())
        })
    }

    fn blob_exists(&self, target: &Reference, digest: &Digest) -> Result<bool> {
        self.run(|| async move {
            self.client
                .blob_exists(target, digest.as_str())
                .await
                .map_err(|e| self.classify(e, target.repository(), Subject::Other))
        })
    }

    /// Asks the registry to link a blob of repository `from` into `target`; false when it would
    /// not (the blob is not there, the token does not cover `from`, or the registry started an
    /// upload instead).
    fn mount(&self, target: &Reference, from: &str, digest: &Digest) -> Result<bool> {
        let source = self.reference(from);
        let source = &source;
        let result = self.run(|| async move {
            match self.client.mount_blob(target, source, digest.as_str()).await {
                Ok(()) => Ok(true),
                Err(OciDistributionError::SpecViolationError(_)) => Ok(false),
                Err(e) => Err(self.classify(e, target.repository(), Subject::Other)),
            }
        });
        match result {
            // A token scoped to the target repository may not cover the source (oci-client asks
            // for one scope); an upload still works, and genuinely bad credentials fail there.
            Err(OciError::Registry { .. } | OciError::RegistryAuth { .. }) => Ok(false),
            other => other,
        }
    }

    /// On a token-auth registry, gets one bearer token that allows pushing to `target` and
    /// pulling from each of `sources`, and makes it `target`'s push token. `oci-client` asks for
    /// the target's scope only, and a registry refuses to mount a blob from a repository the
    /// token does not cover (the push would then upload the base layers again). Best effort:
    /// without a bearer challenge, or on any failure, nothing changes.
    fn prepare_mounts(&self, target: &Reference, sources: &[String]) {
        if sources.is_empty() || matches!(self.auth, RegistryAuth::Bearer(_)) {
            return;
        }
        let scheme = if self.plain_http { "http" } else { "https" };
        let registry = target.resolve_registry().to_string();
        let mut scopes = vec![format!("repository:{}:pull,push", target.repository())];
        scopes.extend(sources.iter().map(|s| format!("repository:{s}:pull")));
        let work = async {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(15))
                .timeout(Duration::from_secs(60))
                .user_agent(concat!("ext-extend/", env!("CARGO_PKG_VERSION")));
            for p in &self.proxies {
                builder = builder.proxy(p.clone());
            }
            let http = builder.build().ok()?;
            let ping = http.get(format!("{scheme}://{registry}/v2/")).send().await.ok()?;
            let header = ping.headers().get(http::header::WWW_AUTHENTICATE)?.to_str().ok()?.to_string();
            let params = bearer_challenge(&header)?;
            let mut query: Vec<(&str, &str)> = Vec::new();
            if let Some(service) = params.get("service") {
                query.push(("service", service));
            }
            query.extend(scopes.iter().map(|s| ("scope", s.as_str())));
            let url = reqwest::Url::parse_with_params(params.get("realm")?, &query).ok()?;
            let mut request = http.get(url);
            if let RegistryAuth::Basic(user, password) = &self.auth {
                request = request.basic_auth(user, Some(password));
            }
            let answer = request.send().await.ok()?;
            if !answer.status().is_success() {
                tracing::debug!("registry {}: token for mounts refused ({})", self.registry, answer.status());
                return None;
            }
            let body: Value = serde_json::from_slice(&answer.bytes().await.ok()?).ok()?;
            let token = body.get("token").or_else(|| body.get("access_token"))?.as_str()?.to_string();
            let token = RegistryTokenType::Bearer(RegistryToken::Token { token });
            self.client.tokens.insert(target, RegistryOperation::Push, token).await;
            Some(())
        };
        if runtime().block_on(work).is_some() {
            tracing::debug!("registry {}: one token for {}", self.registry, scopes.join(" "));
        }
    }

    /// Uploads a file as one streamed PUT; at most [`UPLOAD_CHUNK`] of it is in memory.
    fn upload_file(&self, target: &Reference, path: &Path, digest: &Digest, size: u64) -> Result<()> {
        self.run(|| async move {
            let mut file = File::open(path).map_err(OciError::io(path))?;
            let progress = Progress::new("pushed", format!("{} to {}", digest.short(), self.registry), Some(size));
            let handle = progress.handle();
            let local_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
            let seen = local_error.clone();
            let chunks = futures_util::stream::iter(std::iter::from_fn(move || {
                let mut buf = vec![0u8; UPLOAD_CHUNK];
                match read_full(&mut file, &mut buf) {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        handle.inc(n as u64);
                        // The client asks for the next chunk once it sent the last one.
                        touch();
                        Some(Ok(bytes::Bytes::from(buf)))
                    }
                    Err(e) => {
                        let message = e.to_string();
                        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        Some(Err(OciDistributionError::IoError(std::io::Error::other(message))))
                    }
                }
            }));
            let pushed = self.client.push_blob_stream(target, chunks, digest.as_str(), Some(size)).await;
            if let Some(e) = local_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(OciError::Io { path: path.into(), source: e }.into());
            }
            pushed.map_err(|e| self.classify(e, target.repository(), Subject::Other))?;
            progress.finish();
            Ok(())
        })
    }

    fn upload_bytes(&self, target: &Reference, bytes: &[u8], digest: &Digest) -> Result<()> {
        self.run(|| async move {
            self.client
                .push_blob(target, bytes.to_vec(), digest.as_str())
                .await
                .map(|_| ())
                .map_err(|e| self.classify(e, target.repository(), Subject::Other))
        })
    }

    /// PUTs the manifest by tag and returns the digest the registry now serves for the tag.
    fn put_manifest(&self, target: &Reference, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let content_type = http::HeaderValue::from_str(media_type).map_err(|_| OciError::Registry {
            registry: self.registry.clone(),
            message: format!("bad media type {media_type}"),
        })?;
        let content_type = &content_type;
        let location = self.run(|| async move {
            self.client
                .push_manifest_raw(target, bytes.to_vec(), content_type.clone())
                .await
                .map_err(|e| self.classify(e, target.repository(), Subject::Other))
        })?;
        tracing::debug!("manifest at {location}");
        let served = self.run(|| async move {
            self.client
                .fetch_manifest_digest(target, &self.auth)
                .await
                .map_err(|e| self.classify(e, target.repository(), Subject::Manifest(target.tag().unwrap_or("latest"))))
        })?;
        served.parse().map_err(|_| OciError::Registry {
            registry: self.registry.clone(),
            message: format!("{}: the registry answered with digest `{served}`", target.repository()),
        })
    }
}

/// Fetches blobs of one repository into the cache (see [`BlobStore::ensure`]).
struct RegistryFetcher {
    client: Arc<RegistryClient>,
    origin: RegistryRef,
    /// Digests that are manifests (children of an index): fetched from `/manifests/`.
    manifests: Mutex<HashSet<Digest>>,
    /// Sizes from the descriptors seen so far, checked when a caller does not give one.
    sizes: Mutex<HashMap<Digest, u64>>,
}

impl RegistryFetcher {
    /// Records what an index or manifest says about the blobs it names.
    fn note(&self, bytes: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Value>(bytes) else { return };
        let entries = |key: &str| doc.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = |d: &Value| -> Option<Digest> {
            let digest: Digest = d.get("digest")?.as_str()?.parse().ok()?;
            if let Some(size) = d.get("size").and_then(Value::as_u64) {
                sizes.insert(digest.clone(), size);
            }
            Some(digest)
        };
        let children: Vec<Digest> = entries("manifests").iter().filter_map(&mut record).collect();
        entries("layers").iter().for_each(|d| {
            record(d);
        });
        if let Some(config) = doc.get("config") {
            record(config);
        }
        drop(sizes);
        self.manifests.lock().unwrap_or_else(|e| e.into_inner()).extend(children);
    }
}

impl BlobFetcher for RegistryFetcher {
    fn fetch(&self, digest: &Digest, size: Option<u64>, dest: &Path) -> Result<()> {
        let size = size.or_else(|| self.sizes.lock().unwrap_or_else(|e| e.into_inner()).get(digest).copied());
        let is_manifest = self.manifests.lock().unwrap_or_else(|e| e.into_inner()).contains(digest);
        if is_manifest {
            let bytes = self.client.get_manifest(&self.origin.repository, digest.as_str())?;
            let origin = format!("{}/{}", self.origin.registry, self.origin.repository);
            let actual = Digest::of(&bytes);
            if actual != *digest {
                return Err(OciError::RemoteDigestMismatch { digest: digest.clone(), actual, origin });
            }
            if let Some(s) = size
                && s != bytes.len() as u64
            {
                return Err(OciError::RemoteSizeMismatch {
                    digest: digest.clone(),
                    expected: s,
                    actual: bytes.len() as u64,
                    origin,
                });
            }
            self.note(&bytes);
            return write_file(dest, &bytes);
        }
        self.client.download_blob(&self.origin.repository, digest, size, dest)?;
        if size.is_some_and(|s| s <= 4 << 20) {
            // A config (or a nested index): remember the blobs it names.
            if let Ok(bytes) = std::fs::read(dest) {
                self.note(&bytes);
            }
        }
        Ok(())
    }

    fn origin(&self) -> Option<&RegistryRef> {
        Some(&self.origin)
    }
}

/// Resolves `docker://` `r` to a single-platform image whose store is the blob cache: the
/// manifest (and the index, if any) and the config are fetched now, layers when read.
pub fn open_image(r: &RegistryRef, platform: &Platform, opts: &StoreOptions) -> Result<Image> {
    let client = client_for(&r.registry, opts)?;
    let cache = BlobStore::new(opts.cache_dir());
    cache.remove_stale_downloads();
    let name = ImageRef::Registry(r.clone()).to_string();
    let fetcher = Arc::new(RegistryFetcher {
        client: client.clone(),
        origin: RegistryRef { registry: r.registry.clone(), repository: r.repository.clone(), tag: None, digest: None },
        manifests: Mutex::default(),
        sizes: Mutex::default(),
    });
    // A tag may have moved, so it is always asked for; a digest is looked up in the cache first.
    let (digest, bytes) = match &r.digest {
        Some(d) if cache.has(d) => (d.clone(), cache.read_verified(d, None)?),
        _ => {
            let bytes = client.get_manifest(&r.repository, &r.reference())?;
            let digest = Digest::of(&bytes);
            if let Some(want) = &r.digest
                && *want != digest
            {
                return Err(OciError::RemoteDigestMismatch {
                    digest: want.clone(),
                    actual: digest,
                    origin: format!("{}/{}", r.registry, r.repository),
                });
            }
            put_blob(&cache, &digest, &bytes)?;
            (digest, bytes)
        }
    };
    fetcher.note(&bytes);
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| OciError::Malformed {
        path: cache.blob_path(&digest),
        what: "image manifest",
        reason: e.to_string(),
    })?;
    let media_type = match doc.get("mediaType").and_then(Value::as_str) {
        Some(t) => t.to_string(),
        None if doc.get("manifests").is_some() => media::OCI_INDEX.into(),
        None => media::OCI_MANIFEST.into(),
    };
    let desc = Descriptor::new(MediaType::from(media_type.as_str()), bytes.len() as u64, &digest);
    let store = cache.with_fetcher(fetcher);
    resolve_descriptor(&store, &desc, platform, &name)
}

/// The manifest `reference` (a tag or a digest) of `r`'s repository, or `None` when the
/// registry has no such tag or repository: a lookup that may miss, as the step cache's are.
pub fn find_manifest(r: &RegistryRef, reference: &str, opts: &StoreOptions) -> Result<Option<Vec<u8>>> {
    let client = client_for(&r.registry, opts)?;
    match client.get_manifest(&r.repository, reference) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(OciError::ImageNotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A blob store in `dir` (`<dir>/blobs/sha256/<hex>`) that downloads the blobs it lacks from
/// `r`'s repository, verified, when they are first opened or [`BlobStore::ensure`]d; its
/// origin lets a push to another repository of the same registry mount them.
pub fn remote_store(r: &RegistryRef, dir: &Path, opts: &StoreOptions) -> Result<BlobStore> {
    let client = client_for(&r.registry, opts)?;
    let fetcher = Arc::new(RegistryFetcher {
        client,
        origin: RegistryRef { registry: r.registry.clone(), repository: r.repository.clone(), tag: None, digest: None },
        manifests: Mutex::default(),
        sizes: Mutex::default(),
    });
    let store = BlobStore::new(dir);
    store.remove_stale_downloads();
    Ok(store.with_fetcher(fetcher))
}

/// One blob to push and where its bytes are if the registry needs them.
pub struct PushLayer {
    pub digest: Digest,
    pub size: u64,
    pub source: LayerSource,
}

pub enum LayerSource {
    /// A file written by this build.
    File(PathBuf),
    /// A blob store (a layout, or the registry cache, which may mount or download it).
    Store(BlobStore),
}

/// What a push made visible.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: Digest,
    pub size: u64,
}

/// Pushes an image to `target` (a tag; `latest` if none): missing layers, the config, then the
/// manifest. Base layers the registry has are neither uploaded nor downloaded.
pub fn push_image(
    target: &RegistryRef,
    manifest: &[u8],
    manifest_media_type: &str,
    config: &[u8],
    layers: &[PushLayer],
    opts: &StoreOptions,
) -> Result<Pushed> {
    let client = client_for(&target.registry, opts)?;
    let tag = target.tag.clone().unwrap_or_else(|| "latest".into());
    let tagged = Reference::with_tag(target.registry.clone(), target.repository.clone(), tag.clone());
    let mut sources: Vec<String> = layers
        .iter()
        .filter_map(|l| match &l.source {
            LayerSource::Store(store) => store.origin(),
            LayerSource::File(_) => None,
        })
        .filter(|o| o.registry == target.registry && o.repository != target.repository)
        .map(|o| o.repository.clone())
        .collect();
    sources.sort();
    sources.dedup();
    client.prepare_mounts(&tagged, &sources);
    let (mut present, mut mounted, mut uploaded) = (0, 0, 0);
    for layer in layers {
        if client.blob_exists(&tagged, &layer.digest)? {
            tracing::debug!("{} is already in {}/{}", layer.digest.short(), target.registry, target.repository);
            present += 1;
            continue;
        }
        let path = match &layer.source {
            LayerSource::File(p) => p.clone(),
            LayerSource::Store(store) => {
                if let Some(origin) = store.origin()
                    && origin.registry == target.registry
                    && origin.repository != target.repository
                    && client.mount(&tagged, &origin.repository, &layer.digest)?
                {
                    tracing::info!("mounted {} from {}", layer.digest.short(), origin.repository);
                    mounted += 1;
                    continue;
                }
                store.ensure(&layer.digest, Some(layer.size))?;
                store.blob_path(&layer.digest)
            }
        };
        client.upload_file(&tagged, &path, &layer.digest, layer.size)?;
        uploaded += 1;
    }
    let config_digest = Digest::of(config);
    if !client.blob_exists(&tagged, &config_digest)? {
        client.upload_bytes(&tagged, config, &config_digest)?;
    }
    let digest = Digest::of(manifest);
    let served = client.put_manifest(&tagged, manifest, manifest_media_type)?;
    if served != digest {
        return Err(OciError::Registry {
            registry: target.registry.clone(),
            message: format!(
                "{}:{tag} is {served} after pushing manifest {digest} (did another push race this one?)",
                target.repository
            ),
        });
    }
    tracing::info!(
        "pushed {}/{}:{tag}: {uploaded} layers uploaded, {mounted} mounted, {present} already there",
        target.registry,
        target.repository
    );
    Ok(Pushed { digest, size: manifest.len() as u64 })
}

/// The parameters of a `Bearer` challenge (`Bearer realm="...",service="...",scope="..."`).
fn bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim();
    let (scheme, mut rest) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = after;
    }
    params.contains_key("realm").then_some(params)
}

/// Adds small verified bytes (a manifest) to a store, atomically.
fn put_blob(store: &BlobStore, digest: &Digest, bytes: &[u8]) -> Result<()> {
    if store.has(digest) {
        return Ok(());
    }
    let dir = store.blobs_dir();
    std::fs::create_dir_all(&dir).map_err(OciError::io(&dir))?;
    let mut tmp = tempfile::Builder::new().prefix(".put-").tempfile_in(&dir).map_err(OciError::io(&dir))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(OciError::io(tmp.path()))?;
    let dest = store.blob_path(digest);
    tmp.persist(&dest).map_err(|e| OciError::Io { path: dest, source: e.error })?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(OciError::io(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(OciError::io(path))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The HTTP status behind an `oci-client` error, if any.
fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.first().map(|x| match &x.code {
            OciErrorCode::Unauthorized => 401,
            OciErrorCode::Denied => 403,
            OciErrorCode::ManifestUnknown
            | OciErrorCode::NameUnknown
            | OciErrorCode::NotFound
            | OciErrorCode::BlobUnknown => 404,
            OciErrorCode::Toomanyrequests => 429,
            OciErrorCode::Other(code) if code.eq_ignore_ascii_case("UNKNOWN") => 429,
            _ => 400,
        }),
        _ => None,
    }
}

/// A short, one-line description of a registry's answer.
fn describe(e: &OciDistributionError) -> String {
    let text = match e {
        OciDistributionError::ServerError { code, message, .. } => {
            let message = message.trim();
            if message.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {message}") }
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|x| {
                format!(
                    "{}: {}",
                    serde_json::to_value(&x.code).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                    x.message
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => format!("HTTP {s}"),
            None => innermost(e),
        },
        other => other.to_string(),
    };
    one_line(&text)
}

/// The root cause of an error chain (e.g. "Connection refused (os error 111)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

fn one_line(s: &str) -> String {
    let s: Vec<&str> = s.split_whitespace().collect();
    let s = s.join(" ");
    if s.chars().count() > 300 { format!("{}...", s.chars().take(300).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_named_registries() {
        let none: Vec<String> = vec![];
        assert!(allows_plain_http("127.0.0.1:5000", &none));
        assert!(allows_plain_http("127.1.2.3", &none));
        assert!(allows_plain_http("localhost:5000", &none));
        assert!(allows_plain_http("[::1]:5000", &none));
        assert!(!allows_plain_http("registry.example.com", &none));
        assert!(!allows_plain_http("10.0.0.1:5000", &none));
        let named = vec!["registry.lan".to_string(), "10.0.0.1:5000".to_string()];
        assert!(allows_plain_http("registry.lan:443", &named));
        assert!(allows_plain_http("10.0.0.1:5000", &named));
        assert!(!allows_plain_http("10.0.0.1:6000", &named));
    }

    #[test]
    fn bearer_challenges() {
        let p = bearer_challenge(
            r#"Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.io/token");
        assert_eq!(p["service"], "registry.io");
        assert_eq!(p["scope"], "repository:a/b:pull");
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(bearer_challenge(r#"Bearer service="x""#).is_none());
    }

    #[test]
    fn statuses_and_messages() {
        let e =
            OciDistributionError::ServerError { code: 503, url: "u".into(), message: "down\nfor maintenance".into() };
        assert_eq!(status_of(&e), Some(503));
        assert_eq!(describe(&e), "HTTP 503: down for maintenance");
        let envelope: oci_client::errors::OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#).unwrap();
        let e = OciDistributionError::RegistryError { envelope, url: "u".into() };
        assert_eq!(status_of(&e), Some(404));
        assert_eq!(describe(&e), "MANIFEST_UNKNOWN: manifest unknown");
    }
}
