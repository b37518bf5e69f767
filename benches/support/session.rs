//! The session every store bench request loads and saves: three fields,
//! about 150 bytes encoded. Shared by `benches/stores.rs` and the anchor crate
//! (`benches/anchor`), whose tower-sessions-core version differs: the same
//! source compiles against either, so both measure the same session.

use tower_sessions_core::session::{Id, Record};

/// A fresh session (new id, expiring in an hour). `BENCH_PAD=n` adds a field
/// of `n` bytes, for larger sessions (the anchor inherits the variable).
pub fn small_session() -> Record {
    let mut record = Record {
        id: Id::default(),
        data: [
            ("user_id".to_owned(), serde_json::json!(42)),
            ("name".to_owned(), serde_json::json!("Ada Lovelace")),
            ("csrf".to_owned(), serde_json::json!("f3b1c2d4e5f60718293a4b5c6d7e8f90f3b1c2d4e5f60718293a4b5c6d7e8f90")),
        ]
        .into(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    let pad = std::env::var("BENCH_PAD").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    if pad > 0 {
        record.data.insert("notes".to_owned(), serde_json::json!("n".repeat(pad)));
    }
    record
}
