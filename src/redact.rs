//! Keeping secrets out of `Debug`, `Display`, errors and logs.

/// A URL with its password (user-info password, or a `pass`/`password` query
/// parameter) replaced by `<redacted>`. Works on malformed URLs too.
///
/// ```
/// use tower_sessions_multi_redis_store::redact_url;
///
/// assert_eq!(redact_url("redis://app:s3cret@db:6379/1"), "redis://app:<redacted>@db:6379/1");
/// assert_eq!(redact_url("redis+unix:///run/r.sock?db=1&pass=s3cret"), "redis+unix:///run/r.sock?db=1&pass=<redacted>");
/// assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let host = &authority[at..];
            match userinfo.find(':') {
                Some(colon) => format!("{}:<redacted>{host}", &userinfo[..colon]),
                None => format!("{userinfo}{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k == "pass" || k == "password" => format!("{k}=<redacted>"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn password_only_and_garbage() {
        assert_eq!(redact_url("redis://:pw@h"), "redis://:<redacted>@h");
        assert_eq!(redact_url("user:pw@host"), "user:<redacted>@host");
        assert_eq!(redact_url(""), "");
        assert_eq!(redact_url("rediss://u:p@w@h:1/0?password=x#y"), "rediss://u:<redacted>@h:1/0?password=<redacted>");
    }
}
