//! Writes acknowledged once replicas hold them: a pipeline of writes ends
//! with `WAIT replicas millis` on the connection that carried them (one
//! `WAIT` covers every write before it there), and its reply decides.

use redis::{Pipeline, RedisError, RedisResult, Value};

/// Replicas to wait for, and for how long (ms).
pub(crate) type Wait = (u32, u64);

/// What [`not_replicated`] errors say first.
const NOT_REPLICATED: &str = "not replicated";

/// Ends `pipe` with `WAIT`.
pub(crate) fn end_with_wait(pipe: &mut Pipeline, (replicas, millis): Wait) {
    pipe.cmd("WAIT").arg(replicas).arg(millis);
}

/// The replies of a pipeline [`end_with_wait`] ended, without `WAIT`'s: an
/// error unless enough replicas acknowledged the writes before it (a
/// missing or malformed reply counts as none).
pub(crate) fn acknowledged(mut replies: Vec<Value>, (replicas, millis): Wait) -> RedisResult<Vec<Value>> {
    let acked = match replies.pop() {
        Some(Value::Int(n)) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    };
    if acked < replicas {
        return Err(not_replicated(acked, replicas, millis));
    }
    Ok(replies)
}

/// The error of a write fewer replicas acknowledged than asked: it ran on
/// the master, and a failover may lose it (its outcome is unknown).
fn not_replicated(acked: u32, replicas: u32, millis: u64) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        NOT_REPLICATED,
        format!(
            "WAIT: {acked} of {replicas} replica(s) acknowledged the write within {millis} ms \
             (it ran on the master; a failover may lose it)"
        ),
    ))
}

/// Whether `err` is a [`not_replicated`] error.
pub(crate) fn is_not_replicated(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::Client && err.to_string().starts_with(NOT_REPLICATED)
}
