//! The crate's error type: what went wrong with which object, in one sentence.
//!
//! A message names the object (`s3://bucket/key`) or file once, then says
//! what is wrong. The underlying object_store error, when it adds something
//! (the HTTP status, the S3 error code, the retries made), is folded into the
//! message rather than chained as a source, so that printing the chain (as
//! anyhow's `{:#}` does) never says the same thing twice.

use std::fmt;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of problem an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The argument is not a path or a valid `s3://BUCKET/KEY` URL.
    InvalidUrl,
    /// The store's configuration (endpoint, region, options) is not usable.
    Config,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The bucket exists, but no object has this key.
    NoSuchKey,
    /// The store refused the credentials, or they lack a permission.
    AccessDenied,
    /// The object already exists and the operation does not replace it.
    AlreadyExists,
    /// The object changed while it was being read (its ETag differs from the
    /// one it had when it was opened).
    Changed,
    /// The store could not be reached, or kept failing after the retries.
    Network,
    /// The store answered with an error that fits no other kind.
    Store,
    /// The image's bytes are damaged, or not an image: see [`Error::image`].
    Image,
    /// A local file could not be read or written.
    Io,
    /// An upload was used after it had failed or been aborted.
    Aborted,
}

/// The error type of this crate.
///
/// Its `Display` is `OBJECT: what is wrong`, for example
/// `s3://images/app.mimg: no object has this key`. It is one pointer wide,
/// so results stay small.
#[derive(Debug)]
pub struct Error(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    what: Option<String>,
    message: String,
    image: Option<memimg::Error>,
    io: Option<std::io::Error>,
}

impl Error {
    /// Creates an error of `kind` about `what` (a URL or path, if any).
    pub fn new(kind: ErrorKind, what: Option<&str>, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            what: what.map(str::to_string),
            message: message.into(),
            image: None,
            io: None,
        }))
    }

    /// Wraps an error of the `memimg` crate about `what`. When it is an I/O
    /// error caused by this crate (a read of a remote image that failed), the
    /// result takes that cause's kind, and says what the reader was doing
    /// and why, once. Otherwise it is [`ErrorKind::Image`] (damage, not an
    /// image, wrong key…, see [`Error::image`]) or [`ErrorKind::Io`].
    pub fn from_memimg(what: &str, e: memimg::Error) -> Error {
        if e.kind() == memimg::ErrorKind::Io {
            if let Some(cause) = Error::find(&e) {
                return Error(Box::new(Inner {
                    kind: cause.0.kind,
                    what: Some(what.to_string()),
                    message: format!("{}: {}", e.message(), cause.0.message),
                    image: None,
                    io: None,
                }));
            }
            return Error(Box::new(Inner {
                kind: ErrorKind::Io,
                what: named(what, &e),
                message: e.to_string(),
                image: Some(e),
                io: None,
            }));
        }
        Error(Box::new(Inner {
            kind: ErrorKind::Image,
            what: named(what, &e),
            message: e.to_string(),
            image: Some(e),
            io: None,
        }))
    }

    /// Wraps a local I/O error with what was being done.
    pub(crate) fn io(what: &str, doing: &str, e: std::io::Error) -> Error {
        Error(Box::new(Inner {
            kind: ErrorKind::Io,
            what: Some(what.to_string()),
            message: format!("{doing}: {e}"),
            image: None,
            io: Some(e),
        }))
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The object or file the error is about, if any.
    pub fn what(&self) -> Option<&str> {
        self.0.what.as_deref()
    }

    /// The message, without the object's name.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The `memimg` error, for [`ErrorKind::Image`] (and local
    /// [`ErrorKind::Io`]): its kind and location say what is damaged and
    /// where.
    pub fn image(&self) -> Option<&memimg::Error> {
        self.0.image.as_ref()
    }

    /// True when the error means the image's bytes are damaged (as opposed to
    /// a missing object, refused credentials or a network failure).
    pub fn is_damage(&self) -> bool {
        self.0.image.as_ref().is_some_and(memimg::Error::is_damage)
    }

    /// The `std::io::ErrorKind` this maps to when it travels through
    /// [`memimg::ReadAt`].
    pub(crate) fn io_kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self.0.kind {
            ErrorKind::NoSuchBucket | ErrorKind::NoSuchKey => K::NotFound,
            ErrorKind::AccessDenied => K::PermissionDenied,
            ErrorKind::InvalidUrl | ErrorKind::Config => K::InvalidInput,
            ErrorKind::AlreadyExists => K::AlreadyExists,
            ErrorKind::Image => K::InvalidData,
            ErrorKind::Io => self.0.io.as_ref().map_or(K::Other, std::io::Error::kind),
            _ => K::Other,
        }
    }

    /// This error as an `io::Error`, keeping it findable with [`Error::find`].
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(self.io_kind(), self)
    }

    /// Finds this crate's error in a chain of sources: in an `io::Error`
    /// returned by the reader or writer, or in a `memimg::Error` wrapping one.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<Error>() {
                return Some(r);
            }
            // memimg's error prints its I/O cause itself and so does not
            // return it as its source: look inside it directly.
            let io = e.downcast_ref::<std::io::Error>().or_else(|| {
                e.downcast_ref::<memimg::Error>()
                    .and_then(memimg::Error::io_error)
            });
            if let Some(r) = io
                .and_then(std::io::Error::get_ref)
                .and_then(|i| i.downcast_ref::<Error>())
            {
                return Some(r);
            }
            cur = e.source();
        }
        None
    }
}

/// `what`, unless `e`'s message names it already (memimg's I/O errors say
/// `opening PATH: …`): each context once.
fn named(what: &str, e: &memimg::Error) -> Option<String> {
    (!e.to_string().contains(what)).then(|| what.to_string())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.what {
            Some(w) => write!(f, "{w}: {}", self.0.message),
            None => f.write_str(&self.0.message),
        }
    }
}

impl std::error::Error for Error {}

/// Classifies an object_store error about the object `url`.
///
/// `NotFound` cannot tell a missing bucket from a missing key on a HEAD (the
/// answer has no body), so callers that need the difference probe with a GET;
/// see `reader::not_found`.
pub(crate) fn from_store(url: &str, doing: &str, e: &object_store::Error) -> Error {
    use object_store::Error as E;
    let raw = chain(e);
    let code = s3_code(&raw);
    let detail = one_line(e);
    let refused = || {
        format!(
            "{doing}: the store refused the credentials or the permission ({})",
            code.as_deref().unwrap_or("403 Forbidden")
        )
    };
    let (kind, message) = match e {
        E::NotFound { .. } if raw.contains("NoSuchBucket") => {
            (ErrorKind::NoSuchBucket, "the bucket does not exist".to_string())
        }
        E::NotFound { .. } => (ErrorKind::NoSuchKey, "no object has this key".to_string()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => (ErrorKind::AccessDenied, refused()),
        E::Precondition { .. } => (
            ErrorKind::Changed,
            format!("{doing}: the object changed while it was being read (its ETag no longer matches); open it again"),
        ),
        E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, format!("{doing}: the object already exists")),
        E::Generic { .. } if raw.contains("NoSuchBucket") => {
            (ErrorKind::NoSuchBucket, "the bucket does not exist".to_string())
        }
        E::Generic { .. } if is_denied(&raw) => (ErrorKind::AccessDenied, refused()),
        E::Generic { .. } if is_transport(&detail) => {
            (ErrorKind::Network, format!("{doing}: {detail}"))
        }
        _ => (ErrorKind::Store, format!("{doing}: {detail}")),
    };
    Error::new(kind, Some(url), message)
}

fn is_denied(detail: &str) -> bool {
    [
        "403 Forbidden",
        "401 Unauthorized",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
    ]
    .iter()
    .any(|s| detail.contains(s))
}

fn is_transport(detail: &str) -> bool {
    // object_store reports failures to connect, timeouts and cut connections
    // as an HTTP error, not a status; server errors come with a 5xx status.
    detail.contains("HTTP error")
        || detail.contains("error sending request")
        || detail.contains("timed out")
        || detail.contains("Connection")
        || detail.contains("connection")
        || detail.contains(" 50")
}

/// The S3 error code and message in an error's text, as `Code: message`
/// (from `<Code>NoSuchKey</Code><Message>…</Message>`), if there is a code.
fn s3_code(detail: &str) -> Option<String> {
    let tag = |t: &str| {
        let (open, close) = (format!("<{t}>"), format!("</{t}>"));
        let start = detail.find(&open)? + open.len();
        let len = detail[start..].find(&close)?;
        Some(detail[start..start + len].trim().to_string())
    };
    let code = tag("Code")?;
    Some(match tag("Message") {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code,
    })
}

/// The error and its sources joined, without repeats: object_store nests
/// the same text at several levels.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        let s = e.to_string();
        // A level whose text the previous one already contains adds nothing.
        if !parts.last().is_some_and(|p| p.contains(s.as_str())) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The error and its sources on one line, with an S3 XML error body cut to
/// its code and message.
pub(crate) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = chain(e);
    if let Some(p) = out.find("<?xml").or_else(|| out.find("<Error>")) {
        let code = s3_code(&out[p..]);
        out.truncate(p);
        out.push_str(code.as_deref().unwrap_or("(an error body without a code)"));
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_itself_through_io_and_memimg_errors() {
        let e = Error::new(
            ErrorKind::NoSuchKey,
            Some("s3://b/k"),
            "no object has this key",
        );
        let io = e.into_io();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let m = memimg::Error::io("reading header at 0x0", io);
        let found = Error::find(&m).unwrap();
        assert_eq!(found.kind(), ErrorKind::NoSuchKey);
        assert_eq!(found.to_string(), "s3://b/k: no object has this key");
    }

    #[test]
    fn s3_codes_are_kept_and_xml_dropped() {
        let d = "Server returned non-2XX status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>InvalidAccessKeyId</Code><Message>No such key.</Message><RequestId>1</RequestId></Error>";
        assert_eq!(
            s3_code(d).as_deref(),
            Some("InvalidAccessKeyId: No such key.")
        );
        let e = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: d.into(),
        };
        let r = from_store("s3://b/k", "reading", &e);
        assert_eq!(r.kind(), ErrorKind::AccessDenied);
        assert_eq!(
            r.to_string(),
            "s3://b/k: reading: the store refused the credentials or the permission (InvalidAccessKeyId: No such key.)"
        );
    }
}
