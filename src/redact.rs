//! Keeping secrets out of `Debug`, `Display`, errors and logs: [`Secret`]
//! for passwords and keys, [`RedisUrl`] for URLs that may hold one. Types
//! that carry them derive `Debug`, so a field added later is covered too.

use std::fmt;

use serde::Deserialize;

/// A password or a private key: `Debug` prints `<redacted>`, and nothing in
/// this crate prints it otherwise.
///
/// ```
/// use tower_sessions_multi_redis_store::Secret;
///
/// let password = Secret::from("s3cret");
/// assert_eq!(format!("{password:?}"), "<redacted>");
/// assert_eq!(password.expose(), "s3cret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret itself, for the one place that sends it to a server.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl From<&String> for Secret {
    fn from(value: &String) -> Secret {
        Secret(value.clone())
    }
}

/// A password from a configuration file: a string, or a number (as
/// Django's settings allow), taken as its text. Anything else is refused
/// without its value in the message, which serde would otherwise quote.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a password: a string or a whole number")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret(value.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
                Ok(Secret(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a password must be a string or a whole number (its value is not shown)"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a password must be a string or a whole number (its value is not shown)"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Redis URL (`redis://`, `rediss://`, `redis+unix://`, `unix://`): `Debug`
/// and `Display` show it with its password (user-info password, or a
/// `pass`/`password` query parameter) replaced by `<redacted>`.
///
/// ```
/// use tower_sessions_multi_redis_store::RedisUrl;
///
/// let url = RedisUrl::from("redis://app:s3cret@db:6379/1");
/// assert_eq!(url.to_string(), "redis://app:<redacted>@db:6379/1");
/// assert_eq!(format!("{url:?}"), "\"redis://app:<redacted>@db:6379/1\"");
/// assert_eq!(url.expose(), "redis://app:s3cret@db:6379/1");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The whole URL, password included, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> RedisUrl {
        RedisUrl(url)
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> RedisUrl {
        RedisUrl(url.to_owned())
    }
}

impl From<&String> for RedisUrl {
    fn from(url: &String) -> RedisUrl {
        RedisUrl(url.clone())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// PEM text (a certificate): `Debug` shows its size, not its bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pem(pub(crate) Vec<u8>);

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<PEM, {} bytes>", self.0.len())
    }
}

/// A URL with its password (user-info password, or a `pass`/`password` query
/// parameter, percent-encoded or not) replaced by `<redacted>`. Works on
/// malformed URLs too, erring on the side of hiding (a password may hold
/// `/`, `?`, `#` or `@` unencoded).
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The user info ends at the authority's last `@`; failing one, a
    // password holding `/`, `?` or `#` unencoded may push it further: with
    // a `:` in the authority and an `@` later on, everything up to that `@`
    // is hidden (over-hiding a port and a path is the safe mistake).
    let userinfo_end = authority.rfind('@').or_else(|| (authority.contains(':')).then(|| rest.rfind('@')).flatten());
    let (authority, tail) = match userinfo_end {
        Some(at) => {
            let (userinfo, host_on) = rest.split_at(at);
            let host_end = host_on.find(['/', '?', '#']).unwrap_or(host_on.len());
            let (host, tail) = host_on.split_at(host_end);
            let authority = match userinfo.find(':') {
                Some(colon) => format!("{}:<redacted>{host}", &userinfo[..colon]),
                None => format!("{userinfo}{host}"),
            };
            (authority, tail)
        }
        None => (authority.to_owned(), tail),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if matches!(percent_decoded(k).as_str(), "pass" | "password") => {
                        format!("{k}=<redacted>")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// `text` with its `%XX` escapes decoded (as redis-rs reads a query key).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_user_info_and_query() {
        assert_eq!(redact_url("redis://app:s3cret@db:6379/1"), "redis://app:<redacted>@db:6379/1");
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=s3cret"),
            "redis+unix:///run/r.sock?db=1&pass=<redacted>"
        );
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
    }

    #[test]
    fn password_only_and_garbage() {
        assert_eq!(redact_url("redis://:pw@h"), "redis://:<redacted>@h");
        assert_eq!(redact_url("user:pw@host"), "user:<redacted>@host");
        assert_eq!(redact_url(""), "");
        assert_eq!(redact_url("rediss://u:p@w@h:1/0?password=x#y"), "rediss://u:<redacted>@h:1/0?password=<redacted>");
    }

    #[test]
    fn passwords_with_url_delimiters_or_an_encoded_key() {
        assert_eq!(redact_url("redis://:pa/ss@h/0"), "redis://:<redacted>@h/0");
        assert_eq!(redact_url("redis://u:pa?ss#x@h:1"), "redis://u:<redacted>@h:1");
        assert_eq!(redact_url("redis+unix:///s?p%61ss=secret"), "redis+unix:///s?p%61ss=<redacted>");
        assert_eq!(redact_url("redis+unix:///s?%70assword=secret&db=1"), "redis+unix:///s?%70assword=<redacted>&db=1");
        assert_eq!(redact_url("redis://h:1/0?x=%"), "redis://h:1/0?x=%");
        // An `@` in a query value: the query's own password is hidden.
        assert_eq!(redact_url("redis+unix:///run/r.sock?pass=p@ss"), "redis+unix:///run/r.sock?pass=<redacted>");
        assert_eq!(redact_url("redis://h/0?password=a@b"), "redis://h/0?password=<redacted>");
        assert!(!redact_url("redis://h:6379/0?password=a@b").contains("a@b"));
    }
}
