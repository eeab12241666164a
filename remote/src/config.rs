//! How to reach the store: endpoint, region, credentials, retries.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::{Error, ErrorKind, Result};

/// The connection settings for S3 and S3-compatible stores.
///
/// [`S3Options::from_env`] reads them the way the AWS CLI and SDKs do; each
/// `with_*` method overrides one. Secrets are never printed by `Debug`.
#[derive(Clone, Default)]
pub struct S3Options {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    allow_http: Option<bool>,
    /// The checksum uploads name; `None` until set, then
    /// [`DEFAULT_UPLOAD_CHECKSUM`] applies.
    upload_checksum: Option<Option<Checksum>>,
    /// Every other `AWS_*` variable object_store understands (role, web
    /// identity, container credentials, checksum…), passed through as is.
    extra: Vec<(AmazonS3ConfigKey, String)>,
    retries: Option<usize>,
    retry_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<set>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<set>"),
            )
            .field("allow_http", &self.allow_http)
            .field("upload_checksum", &self.upload_checksum)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// The checksum every upload names (`x-amz-checksum-algorithm`), so that
/// the store checks each part against the digest sent with it: SHA-256.
///
/// The digest costs the client nothing more: the request signature hashes
/// the body with SHA-256 already (object_store signs payloads), and the
/// checksum header reuses that digest. Naming none is not cheaper for the
/// store: S3 then computes a full-object CRC64NVME itself, and moto (5.2.1)
/// does so at completion by copying the whole object once more in Python,
/// where a named SHA-256 is checked part by part as parts arrive (against
/// moto, completing a 446 MiB capture took 2.6 s without a checksum and
/// 1.9 s with SHA-256 in one pair of runs under load). boto3 names CRC32 by
/// default. `AWS_CHECKSUM_ALGORITHM` (`sha256`, `crc64nvme` or `none`) or
/// [`S3Options::with_upload_checksum`] chooses another.
pub const DEFAULT_UPLOAD_CHECKSUM: Option<Checksum> = Some(Checksum::SHA256);

/// Retries of a failed request (connection refused or cut, timeout, 5xx,
/// 429), by object_store's client. By default 3.
pub const DEFAULT_RETRIES: usize = 3;
/// No retry starts later than this after the first attempt. By default 20 s.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// One request, including its body, may take this long. By default 60 s,
/// enough for a 16 MiB part on a slow link.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting may take this long. By default 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl S3Options {
    /// Settings from the environment, as the AWS CLI reads them:
    ///
    /// - `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`, `AWS_ENDPOINT_URL_S3`): the
    ///   store's URL, for S3-compatible stores (MinIO, Ceph, moto); by default
    ///   AWS S3 itself;
    /// - `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
    ///   without them object_store tries web identity, container and
    ///   instance credentials, as the SDKs do;
    /// - `AWS_REGION`, else `AWS_DEFAULT_REGION`; by default `us-east-1`;
    /// - `AWS_ALLOW_HTTP=true` permits a plain-HTTP endpoint. An endpoint
    ///   written `http://…` permits it by itself: naming one is consent.
    /// - `AWS_CHECKSUM_ALGORITHM`: `sha256` (the default, see
    ///   [`DEFAULT_UPLOAD_CHECKSUM`]), `crc64nvme`, or `none` for a store
    ///   that refuses checksum headers. Another value is refused when the
    ///   store is built.
    ///
    /// Other `AWS_*` variables that object_store knows are passed on.
    pub fn from_env() -> S3Options {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// As [`S3Options::from_env`], from the given variables (for tests, and
    /// for callers that keep settings elsewhere).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> S3Options {
        let mut o = S3Options::default();
        let mut default_region = None;
        for (k, v) in vars {
            if !k.starts_with("AWS_") {
                continue;
            }
            match k.as_str() {
                "AWS_ENDPOINT_URL" | "AWS_ENDPOINT" => o.endpoint = o.endpoint.or(Some(v)),
                // The S3-specific endpoint wins over the general one.
                "AWS_ENDPOINT_URL_S3" => o.endpoint = Some(v),
                "AWS_ACCESS_KEY_ID" => o.access_key_id = Some(v),
                "AWS_SECRET_ACCESS_KEY" => o.secret_access_key = Some(v),
                "AWS_SESSION_TOKEN" => o.session_token = Some(v),
                "AWS_REGION" => o.region = Some(v),
                "AWS_DEFAULT_REGION" => default_region = Some(v),
                "AWS_ALLOW_HTTP" => {
                    o.allow_http = Some(matches!(
                        v.to_ascii_lowercase().as_str(),
                        "1" | "true" | "yes" | "on"
                    ))
                }
                "AWS_CHECKSUM_ALGORITHM" if v.eq_ignore_ascii_case("none") => {
                    o.upload_checksum = Some(None);
                }
                _ => {
                    if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                        o.extra.push((key, v));
                    }
                }
            }
        }
        o.region = o.region.or(default_region);
        o
    }

    /// The checksum uploads name, or `None` for none. By default
    /// [`DEFAULT_UPLOAD_CHECKSUM`].
    pub fn with_upload_checksum(mut self, checksum: Option<Checksum>) -> Self {
        self.upload_checksum = Some(checksum);
        self
    }

    /// The checksum uploads name: the one chosen in code, else
    /// `AWS_CHECKSUM_ALGORITHM`'s, else [`DEFAULT_UPLOAD_CHECKSUM`].
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when `AWS_CHECKSUM_ALGORITHM` names none that
    /// object_store knows.
    pub fn upload_checksum(&self) -> Result<Option<Checksum>> {
        if let Some(c) = self.upload_checksum {
            return Ok(c);
        }
        match self
            .extra
            .iter()
            .rfind(|(k, _)| *k == AmazonS3ConfigKey::Checksum)
        {
            None => Ok(DEFAULT_UPLOAD_CHECKSUM),
            Some((_, v)) => v.parse().map(Some).map_err(|()| {
                Error::new(
                    ErrorKind::Config,
                    None,
                    format!("AWS_CHECKSUM_ALGORITHM={v}: not sha256, crc64nvme or none"),
                )
            }),
        }
    }

    /// The store's URL, e.g. `http://127.0.0.1:9000`. By default AWS S3.
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The region. By default `us-east-1`.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Static credentials.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }

    /// A session token, for temporary credentials.
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Permits (or forbids) plain HTTP. By default permitted only when the
    /// endpoint is written `http://…`.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = Some(allow);
        self
    }

    /// Retries of a failed request. By default [`DEFAULT_RETRIES`].
    pub fn with_retries(mut self, n: usize) -> Self {
        self.retries = Some(n);
        self
    }

    /// How long retries may go on. By default [`DEFAULT_RETRY_TIMEOUT`].
    pub fn with_retry_timeout(mut self, t: Duration) -> Self {
        self.retry_timeout = Some(t);
        self
    }

    /// How long one request may take. By default [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = Some(t);
        self
    }

    /// How long connecting may take. By default [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = Some(t);
        self
    }

    /// The endpoint in use, if one was set.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// A client for `bucket`. Building it makes no request: a missing bucket
    /// or refused credentials show on the first one.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the settings are not usable (a malformed
    /// endpoint, a plain-HTTP endpoint that is not permitted…).
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
        for (k, v) in &self.extra {
            // The checksum is set below (a bad name is refused there).
            if *k != AmazonS3ConfigKey::Checksum {
                b = b.with_config(*k, v.clone());
            }
        }
        if let Some(c) = self.upload_checksum()? {
            b = b.with_checksum_algorithm(c);
        }
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b = b.with_region(
            self.region
                .clone()
                .unwrap_or_else(|| "us-east-1".to_string()),
        );
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k.clone());
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s.clone());
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(t.clone());
        }
        let http_endpoint = self
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let allow_http = self.allow_http.unwrap_or(http_endpoint);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        b = b
            .with_allow_http(allow_http)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                ms(self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                ms(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: self.retries.unwrap_or(DEFAULT_RETRIES),
                retry_timeout: self.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
            });
        if http_endpoint && !allow_http {
            return Err(Error::new(
                ErrorKind::Config,
                self.endpoint.as_deref(),
                "the endpoint is plain HTTP but AWS_ALLOW_HTTP forbids it",
            ));
        }
        let s3 = b.build().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                Some(&format!("s3://{bucket}")),
                format!("configuring the S3 client: {}", crate::error::one_line(&e)),
            )
        })?;
        Ok(Arc::new(s3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> S3Options {
        S3Options::from_vars(v.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn reads_the_aws_variables() {
        let o = vars(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("HOME", "/root"),
        ]);
        assert_eq!(o.endpoint(), Some("http://127.0.0.1:9000"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert!(
            !format!("{o:?}").contains("secret\""),
            "Debug hides the secret"
        );
        // AWS_REGION wins over AWS_DEFAULT_REGION, whatever the order.
        let o = vars(&[("AWS_REGION", "a"), ("AWS_DEFAULT_REGION", "b")]);
        assert_eq!(o.region.as_deref(), Some("a"));
        let o = vars(&[
            ("AWS_ENDPOINT_URL_S3", "http://s3"),
            ("AWS_ENDPOINT_URL", "http://gen"),
        ]);
        assert_eq!(o.endpoint(), Some("http://s3"));
        // A plain-HTTP endpoint builds; forbidding HTTP refuses it clearly.
        vars(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")])
            .store("bucket")
            .unwrap();
        let e = vars(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "false"),
        ])
        .store("bucket")
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[test]
    fn uploads_name_a_checksum() {
        assert_eq!(vars(&[]).upload_checksum().unwrap(), Some(Checksum::SHA256));
        let none = vars(&[("AWS_CHECKSUM_ALGORITHM", "None")]);
        assert_eq!(none.upload_checksum().unwrap(), None);
        let crc = vars(&[("AWS_CHECKSUM_ALGORITHM", "crc64nvme")]);
        assert_eq!(crc.upload_checksum().unwrap(), Some(Checksum::CRC64NVME));
        // Code wins over the environment.
        let o = crc.clone().with_upload_checksum(None);
        assert_eq!(o.upload_checksum().unwrap(), None);
        let o = none.with_upload_checksum(Some(Checksum::SHA256));
        assert_eq!(o.upload_checksum().unwrap(), Some(Checksum::SHA256));
        crc.store("bucket").unwrap();
        // A name object_store does not know is refused when the store is built.
        let bad = vars(&[("AWS_CHECKSUM_ALGORITHM", "md5")]);
        assert_eq!(bad.store("bucket").unwrap_err().kind(), ErrorKind::Config);
    }
}
