//! Talking to registries: which hosts serve a registry ([`hosts`]), the
//! credentials to offer them ([`auth`]), and one configured oci-client per
//! host (`Remote`).

pub mod auth;
pub mod hosts;

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use tokio::io::AsyncWrite;
use tokio::sync::OnceCell;

use crate::reference::Reference;
use auth::Credentials;
use hosts::{Endpoint, HostsError, Scheme};

/// containerd's default `dial_timeout`.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// A registry that sends nothing for this long is taken as gone, so a
/// stalled pull fails (and can be retried) instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("vaina/", env!("CARGO_PKG_VERSION"));

/// Manifest media types a pull accepts.
pub(crate) const ACCEPT_MANIFESTS: &[&str] = &[
    crate::source::MT_OCI_INDEX,
    crate::source::MT_DOCKER_LIST,
    crate::source::MT_OCI_MANIFEST,
    crate::source::MT_DOCKER_MANIFEST,
];

/// Why a request to one host failed.
#[derive(Debug)]
pub(crate) enum RemoteError {
    Client(OciDistributionError),
    /// Credentials could not be turned into a token; the reason names no
    /// secret.
    Auth(String),
}

impl From<OciDistributionError> for RemoteError {
    fn from(e: OciDistributionError) -> Self {
        RemoteError::Client(e)
    }
}

/// One host of a registry, with a client set up as its config says.
pub(crate) struct Remote {
    pub(crate) endpoint: Endpoint,
    client: oci_client::Client,
    credentials: Credentials,
    /// The credentials in oci-client's form, an identity token exchanged
    /// at first use.
    auth: OnceCell<RegistryAuth>,
}

impl Remote {
    pub(crate) fn new(endpoint: Endpoint, credentials: &Credentials) -> Result<Remote, HostsError> {
        let certs = read_cas(&endpoint)?;
        let config = ClientConfig {
            protocol: match endpoint.scheme {
                Scheme::Http => ClientProtocol::Http,
                Scheme::Https => ClientProtocol::Https,
            },
            accept_invalid_certificates: endpoint.skip_verify,
            extra_root_certificates: certs,
            // Indexes are resolved by the pull, to report what it skipped.
            platform_resolver: None,
            connect_timeout: Some(endpoint.dial_timeout.unwrap_or(DIAL_TIMEOUT)),
            read_timeout: Some(READ_TIMEOUT),
            http_proxy: endpoint.proxy.clone(),
            https_proxy: endpoint.proxy.clone(),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| HostsError {
            path: endpoint
                .config
                .clone()
                .unwrap_or_else(|| endpoint.to_string().into()),
            reason: format!("cannot set up a client for {endpoint}: {e}"),
        })?;
        Ok(Remote {
            endpoint,
            client,
            credentials: credentials.clone(),
            auth: OnceCell::new(),
        })
    }

    /// Whether no credentials were given.
    pub(crate) fn anonymous(&self) -> bool {
        self.credentials == Credentials::Anonymous
    }

    /// `name` at this host, for `target` (a tag or a digest). A mirror
    /// keeps the registry as the reference's, so requests carry `?ns=`.
    fn reference(&self, name: &Reference, target: &str) -> oci_client::Reference {
        let registry = if self.endpoint.mirror {
            name.registry()
        } else {
            &self.endpoint.host
        };
        let (registry, repository) = (registry.to_owned(), name.repository().to_owned());
        let mut r = if target.contains(':') {
            oci_client::Reference::with_digest(registry, repository, target.to_owned())
        } else {
            oci_client::Reference::with_tag(registry, repository, target.to_owned())
        };
        if self.endpoint.mirror {
            r.set_mirror_registry(self.endpoint.host.clone());
        }
        r
    }

    async fn auth(&self, name: &Reference) -> Result<&RegistryAuth, RemoteError> {
        self.auth
            .get_or_try_init(|| async {
                match (&self.credentials, self.credentials.registry_auth()) {
                    (_, Some(auth)) => Ok(auth),
                    (Credentials::IdentityToken(token), None) => {
                        let http = self.http_client().map_err(RemoteError::Auth)?;
                        auth::exchange_identity_token(
                            &http,
                            &self.endpoint.to_string(),
                            name.repository(),
                            token,
                        )
                        .await
                        .map_err(RemoteError::Auth)
                    }
                    (_, None) => unreachable!("only identity tokens need an exchange"),
                }
            })
            .await
    }

    /// A plain HTTP client with this host's TLS and proxy settings, for
    /// the token exchange oci-client does not do.
    fn http_client(&self) -> Result<reqwest::Client, String> {
        let ep = &self.endpoint;
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(ep.skip_verify)
            .connect_timeout(ep.dial_timeout.unwrap_or(DIAL_TIMEOUT))
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT);
        for cert in read_cas(ep).map_err(|e| e.to_string())? {
            let cert = reqwest::Certificate::from_pem(&cert.data).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(proxy) = &ep.proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy).map_err(|e| e.to_string())?);
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// The manifest (or index) `target` of `name`, as sent.
    pub(crate) async fn manifest(
        &self,
        name: &Reference,
        target: &str,
    ) -> Result<Vec<u8>, RemoteError> {
        let auth = self.auth(name).await?;
        let (body, _) = self
            .client
            .pull_manifest_raw(&self.reference(name, target), auth, ACCEPT_MANIFESTS)
            .await?;
        Ok(body.to_vec())
    }

    /// Streams blob `digest` of `name` into `out`.
    pub(crate) async fn blob<W: AsyncWrite>(
        &self,
        name: &Reference,
        digest: &str,
        out: W,
    ) -> Result<(), RemoteError> {
        let auth = self.auth(name).await?;
        let reference = self.reference(name, digest);
        // Blob requests take the credentials stored by a manifest request;
        // this host may not have served one.
        self.client
            .store_auth_if_needed(reference.resolve_registry(), auth)
            .await;
        self.client.pull_blob(&reference, digest, out).await?;
        Ok(())
    }
}

/// The endpoint's CA files, one [`Certificate`] per PEM certificate.
fn read_cas(ep: &Endpoint) -> Result<Vec<Certificate>, HostsError> {
    let mut certs = Vec::new();
    for path in &ep.ca {
        let fail = |reason: String| HostsError {
            path: path.clone(),
            reason: match &ep.config {
                Some(config) => format!("{reason} (CA of {ep} in {})", config.display()),
                None => format!("{reason} (CA of {ep})"),
            },
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        let pems: Vec<String> = text
            .split(BEGIN)
            .skip(1)
            .map(|body| format!("{BEGIN}{body}"))
            .collect();
        if pems.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        certs.extend(pems.into_iter().map(|pem| Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.into_bytes(),
        }));
    }
    Ok(certs)
}
