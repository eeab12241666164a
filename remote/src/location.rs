//! Where an image is: a local path or an object in S3-compatible storage.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// An object in an S3-compatible store: `s3://BUCKET/KEY`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    /// The bucket name.
    pub bucket: String,
    /// The object key, without a leading `/`.
    pub key: String,
}

impl S3Url {
    /// Parses `s3://BUCKET/KEY`.
    ///
    /// The bucket must be a valid S3 bucket name (3 to 63 characters of
    /// lower-case letters, digits, `.` and `-`), and the key must not be
    /// empty, end with `/`, or contain empty, `.` or `..` segments (those are
    /// names object_store cannot address).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidUrl`], naming what is wrong.
    pub fn parse(s: &str) -> Result<S3Url> {
        let bad = |why: &str| Error::new(ErrorKind::InvalidUrl, Some(s), why.to_string());
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| bad("an object URL starts with s3://"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("the URL names a bucket but no key: use s3://BUCKET/KEY"))?;
        check_bucket(bucket).map_err(|why| bad(&why))?;
        if key.is_empty() {
            return Err(bad("the key is empty: use s3://BUCKET/KEY"));
        }
        if key.ends_with('/') {
            return Err(bad(
                "the key ends with '/': it names a folder, not an object",
            ));
        }
        if key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(bad("the key has an empty, '.' or '..' segment"));
        }
        if key.chars().any(char::is_control) {
            return Err(bad("the key has a control character"));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The parent hint a child at `self` stores for its parent at
    /// `parent` (spec.md, *The parent hint*): the parent's key relative to
    /// the child's "folder" (its key up to the last `/`) when both are in
    /// one bucket and the parent's key lies under that folder, so that the
    /// pair can be copied elsewhere together; else the parent's URL.
    pub fn hint_for(&self, parent: &S3Url) -> String {
        let folder = self.key.rfind('/').map_or("", |i| &self.key[..=i]);
        match parent.key.strip_prefix(folder) {
            Some(rel) if self.bucket == parent.bucket && !rel.is_empty() => rel.to_string(),
            _ => parent.to_string(),
        }
    }

    /// Where a parent hint stored in the child at `self` points: a URL
    /// hint as it is, a relative one resolved against the child's folder
    /// (as [`S3Url::hint_for`] writes them). `None` for a hint that names
    /// no object (an absolute local path, an empty, `.` or `..` segment): a
    /// hint is only a way to find the parent, whose identity is checked
    /// whatever it names.
    pub fn resolve_hint(&self, hint: &str) -> Option<S3Url> {
        if hint.starts_with("s3://") {
            return S3Url::parse(hint).ok();
        }
        if hint.starts_with('/') {
            return None;
        }
        let folder = self.key.rfind('/').map_or("", |i| &self.key[..=i]);
        S3Url::parse(&format!("s3://{}/{folder}{hint}", self.bucket)).ok()
    }

    pub(crate) fn path(&self) -> object_store::path::Path {
        // The key was checked by `parse` (or by the caller who built the
        // struct); `from` percent-encodes what S3 needs encoded.
        object_store::path::Path::from(self.key.as_str())
    }
}

fn check_bucket(b: &str) -> std::result::Result<(), String> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let ends_ok = b
        .bytes()
        .next()
        .zip(b.bytes().last())
        .is_some_and(|(f, l)| f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric());
    if !(3..=63).contains(&b.len()) || !ok_chars || !ends_ok {
        return Err(format!(
            "{b:?} is not a bucket name (3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl std::str::FromStr for S3Url {
    type Err = Error;

    fn from_str(s: &str) -> Result<S3Url> {
        S3Url::parse(s)
    }
}

/// Where an image is: every argument of imgtool that names an image is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A file on this machine.
    Local(PathBuf),
    /// An object in S3-compatible storage.
    S3(S3Url),
}

impl Location {
    /// Reads an argument: `s3://…` is an object URL, anything else a path.
    /// Other URL schemes (`gs://`, `http://`, …) are refused rather than
    /// taken as relative paths, so a typo never writes a local file named
    /// `gs:`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidUrl`] for a malformed `s3://` URL or an unknown
    /// scheme.
    pub fn parse(arg: &OsStr) -> Result<Location> {
        let Some(s) = arg.to_str() else {
            // Not UTF-8: cannot be a URL.
            return Ok(Location::Local(PathBuf::from(arg)));
        };
        if s.starts_with("s3://") {
            return S3Url::parse(s).map(Location::S3);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            let is_scheme = !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
            if is_scheme {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    Some(s),
                    format!(
                        "{scheme}:// is not supported: images are paths or s3://BUCKET/KEY URLs"
                    ),
                ));
            }
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    /// The local path, when the image is local.
    pub fn as_local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) => None,
        }
    }

    /// The object URL, when the image is remote.
    pub fn as_s3(&self) -> Option<&S3Url> {
        match self {
            Location::Local(_) => None,
            Location::S3(u) => Some(u),
        }
    }

    /// True for an object in remote storage.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::S3(_))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => u.fmt(f),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = Error;

    fn from_str(s: &str) -> Result<Location> {
        Location::parse(OsStr::new(s))
    }
}

impl From<S3Url> for Location {
    fn from(u: S3Url) -> Location {
        Location::S3(u)
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::Local(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_paths() {
        let l: Location = "s3://my-bucket/dir/app.mimg".parse().unwrap();
        assert_eq!(
            l,
            Location::S3(S3Url {
                bucket: "my-bucket".into(),
                key: "dir/app.mimg".into()
            })
        );
        assert_eq!(l.to_string(), "s3://my-bucket/dir/app.mimg");
        let p: Location = "dir/app.mimg".parse().unwrap();
        assert_eq!(p, Location::Local("dir/app.mimg".into()));
        // A colon in a file name is still a path.
        let p: Location = "a:b".parse().unwrap();
        assert_eq!(p.as_local(), Some(Path::new("a:b")));
    }

    #[test]
    fn refuses_bad_urls() {
        for (s, why) in [
            ("s3://bucket", "no key"),
            ("s3://bucket/", "key is empty"),
            ("s3://bucket/dir/", "ends with '/'"),
            ("s3://bucket/a//b", "empty, '.' or '..'"),
            ("s3://bucket/a/../b", "empty, '.' or '..'"),
            ("s3://Bucket/k", "not a bucket name"),
            ("s3://ab/k", "not a bucket name"),
            ("s3://-ab/k", "not a bucket name"),
            ("gs://bucket/k", "gs:// is not supported"),
        ] {
            let e = s.parse::<Location>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{s}");
            let msg = e.to_string();
            assert!(msg.contains(why), "{s}: {msg}");
            assert!(
                msg.starts_with(s),
                "{s}: the message names the URL once: {msg}"
            );
            assert_eq!(msg.matches(s).count(), 1, "{msg}");
        }
    }

    #[test]
    fn hints_are_relative_within_a_folder_and_resolve_back() {
        let u = |s: &str| S3Url::parse(s).unwrap();
        let child = u("s3://fleet/app/gen1.mimg");
        for (parent, hint) in [
            ("s3://fleet/app/gen0.mimg", "gen0.mimg"),
            ("s3://fleet/app/old/gen0.mimg", "old/gen0.mimg"),
            ("s3://fleet/other/gen0.mimg", "s3://fleet/other/gen0.mimg"),
            (
                "s3://elsewhere/app/gen0.mimg",
                "s3://elsewhere/app/gen0.mimg",
            ),
        ] {
            assert_eq!(child.hint_for(&u(parent)), hint);
            assert_eq!(child.resolve_hint(hint), Some(u(parent)));
        }
        assert_eq!(
            u("s3://fleet/top.mimg").hint_for(&u("s3://fleet/base.mimg")),
            "base.mimg"
        );
        for bad in ["/abs/path.mimg", "../up.mimg", "a//b", "", "s3://x/"] {
            assert_eq!(child.resolve_hint(bad), None, "{bad}");
        }
    }
}
