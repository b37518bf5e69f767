//! The crate's one error type, [`Error`]; every variant that concerns a backend
//! names it. Converts into [`tower_sessions_core::session_store::Error`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tower_sessions_core::session_store;

/// Everything that can go wrong in this crate.
///
/// Messages name the backend (and for configuration errors the field) and
/// never contain a password or a URL with credentials.
///
/// ```
/// use tower_sessions_multi_redis_store::{Backend, Error, MultiRedisStore};
///
/// # tokio_test_block_on(async {
/// let err = MultiRedisStore::builder()
///     .backend(Backend::tcp("old", "127.0.0.1", 0))
///     .build()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, Error::Config { .. }));
/// assert_eq!(err.to_string(), "invalid configuration: backend `old`, field `port`: must be between 1 and 65535");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store's configuration is invalid; found when it is built.
    #[non_exhaustive]
    #[error("invalid configuration: {}field `{field}`: {reason}", BackendPrefix(.backend.as_deref()))]
    Config {
        /// The backend concerned, when the problem is one backend's.
        backend: Option<String>,
        /// The configuration field at fault (its name in the config file).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration file could not be read or parsed.
    #[non_exhaustive]
    #[error("configuration file {}: {reason}", .path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong, with the line and column where the parser gives them.
        reason: String,
    },

    /// A Redis command failed on a backend.
    #[non_exhaustive]
    #[error("backend `{backend}`: {op} failed: {source}")]
    Redis {
        /// The backend's name.
        backend: String,
        /// The operation (`GET`, `SET NX`, `DEL`, ...).
        op: &'static str,
        /// What redis-rs reported.
        #[source]
        source: redis::RedisError,
    },

    /// A backend did not answer within its timeout.
    #[non_exhaustive]
    #[error("backend `{backend}`: {op} timed out after {after:?}")]
    Timeout {
        /// The backend's name.
        backend: String,
        /// The operation that timed out.
        op: &'static str,
        /// The timeout that expired.
        after: Duration,
    },

    /// A backend's circuit breaker is open: it was not asked.
    #[non_exhaustive]
    #[error("backend `{backend}`: skipped, circuit breaker open (next probe in {retry_in:?})")]
    Unavailable {
        /// The backend's name.
        backend: String,
        /// Time left before the breaker lets a probe through.
        retry_in: Duration,
    },

    /// The store operation's overall deadline passed.
    #[non_exhaustive]
    #[error("{op}: deadline of {after:?} passed")]
    Deadline {
        /// `load`, `create`, `save` or `delete`.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },

    /// A value stored under a session key is not a session record.
    #[non_exhaustive]
    #[error("backend `{backend}`: the stored value is not a session record: {reason}")]
    Decode {
        /// The backend's name.
        backend: String,
        /// What the decoder reported.
        reason: String,
    },

    /// A session record could not be encoded.
    #[non_exhaustive]
    #[error("encoding the session record failed: {0}")]
    Encode(String),

    /// Several backends failed during one operation; each error names its backend.
    #[non_exhaustive]
    #[error("{} backends failed: {}", .0.len(), ErrorList(.0))]
    Backends(Vec<Error>),

    /// `create` drew an id already taken on every attempt.
    #[non_exhaustive]
    #[error("no free session id found after {attempts} attempts")]
    IdCollision {
        /// How many ids were tried.
        attempts: usize,
    },
}

impl Error {
    /// One error for the failures of a fan-out: the error itself when there is
    /// one, [`Error::Backends`] when there are several.
    pub(crate) fn from_failures(mut failures: Vec<Error>) -> Error {
        if failures.len() == 1 { failures.remove(0) } else { Error::Backends(failures) }
    }

    pub(crate) fn config(backend: Option<&str>, field: &'static str, reason: impl Into<String>) -> Error {
        Error::Config { backend: backend.map(str::to_owned), field, reason: reason.into() }
    }

    /// The backend this error concerns, if it concerns exactly one.
    pub fn backend(&self) -> Option<&str> {
        match self {
            Error::Config { backend, .. } => backend.as_deref(),
            Error::Redis { backend, .. }
            | Error::Timeout { backend, .. }
            | Error::Unavailable { backend, .. }
            | Error::Decode { backend, .. } => Some(backend),
            Error::Backends(errors) => match errors.as_slice() {
                [one] => one.backend(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a backend did not answer in time (this error or any of [`Error::Backends`]).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Deadline { .. } => true,
            Error::Redis { source, .. } => source.is_timeout(),
            Error::Backends(errors) => errors.iter().any(Error::is_timeout),
            _ => false,
        }
    }

    /// Whether a backend was skipped because its circuit breaker is open.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::Backends(errors) => errors.iter().any(Error::is_unavailable),
            _ => false,
        }
    }

    /// Whether a key held another type than the command works on (a
    /// `WRONGTYPE` reply): a key under the prefix that is no session.
    pub(crate) fn is_wrong_type(&self) -> bool {
        matches!(self, Error::Redis { source, .. } if source.code() == Some("WRONGTYPE"))
    }

    /// Whether a backend could not be reached or dropped the connection.
    pub fn is_connection_error(&self) -> bool {
        match self {
            Error::Redis { source, .. } => {
                source.is_connection_refusal() || source.is_connection_dropped() || source.is_io_error()
            }
            Error::Backends(errors) => errors.iter().any(Error::is_connection_error),
            _ => false,
        }
    }
}

impl From<Error> for session_store::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Decode { .. } => session_store::Error::Decode(err.to_string()),
            Error::Encode(_) => session_store::Error::Encode(err.to_string()),
            other => session_store::Error::Backend(other.to_string()),
        }
    }
}

struct BackendPrefix<'a>(Option<&'a str>);

impl fmt::Display for BackendPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "backend `{name}`, "),
            None => Ok(()),
        }
    }
}

struct ErrorList<'a>(&'a [Error]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_failures_name_every_backend() {
        let err = Error::from_failures(vec![
            Error::Timeout { backend: "old".into(), op: "GET", after: Duration::from_secs(1) },
            Error::Decode { backend: "new".into(), reason: "bad marker".into() },
        ]);
        let text = err.to_string();
        assert!(text.starts_with("2 backends failed: "), "{text}");
        assert!(text.contains("backend `old`: GET timed out after 1s"), "{text}");
        assert!(text.contains("backend `new`: the stored value"), "{text}");
        assert!(err.is_timeout());
        assert_eq!(err.backend(), None);
    }

    #[test]
    fn decode_maps_to_the_framework_decode_error() {
        let err = Error::Decode { backend: "a".into(), reason: "x".into() };
        assert!(matches!(
            session_store::Error::from(err),
            session_store::Error::Decode(msg) if msg.contains("backend `a`")
        ));
    }
}
