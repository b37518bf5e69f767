//! Byte compatibility with tower-sessions-redis-store, whose storage is
//! `SET <id> rmp_serde::to_vec(&record) EXAT <expiry seconds>` with no prefix.

use crate::common::{pttl, raw_get, record, servers};
use redis::AsyncCommands;
use time::OffsetDateTime;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::{Backend, MultiRedisStore, codec};

/// `rmp_serde::to_vec` of the record below, as tower-sessions-redis-store 0.16
/// writes it. Must never change: sessions already stored depend on it.
const GOLDEN: &str = "93c4100123456789abcdef001122334455667781a475736572a361646199cd07ee0100000000000000";

fn golden_record() -> Record {
    Record {
        id: Id(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        data: [("user".to_owned(), serde_json::json!("ada"))].into(),
        expiry_date: OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap(), // 2030-01-01
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn golden_bytes_are_pinned() {
    let record = golden_record();
    assert_eq!(hex(&codec::encode(&record).unwrap()), GOLDEN);
    assert_eq!(record.id.to_string(), "d2ZVRDMiEQDvzauJZ0UjAQ", "key = Id's Display");
    let bytes: Vec<u8> =
        (0..GOLDEN.len()).step_by(2).map(|i| u8::from_str_radix(&GOLDEN[i..i + 2], 16).unwrap()).collect();
    assert_eq!(codec::decode(&bytes).unwrap(), record);
    assert_eq!(codec::expiry_millis(record.expiry_date), 1_893_456_000_000);
}

#[tokio::test]
async fn sessions_written_like_tower_sessions_redis_store_load() {
    let server = &servers(1)[0];
    let store = MultiRedisStore::builder().backend(Backend::url("main", server.url())).build().await.unwrap();
    let mut conn = crate::common::conn(server).await;

    // Compact form, EXAT seconds, no prefix: exactly what the other crate does.
    let compact = record("compact");
    let opts = redis::SetOptions::default()
        .with_expiration(redis::SetExpiry::EXAT(compact.expiry_date.unix_timestamp() as u64));
    let _: () = conn.set_options(compact.id.to_string(), rmp_serde::to_vec(&compact).unwrap(), opts).await.unwrap();
    assert_eq!(store.load(&compact.id).await.unwrap(), Some(compact));

    // The named (map) form decodes too.
    let named = record("named");
    let _: () = conn.set_ex(named.id.to_string(), rmp_serde::to_vec_named(&named).unwrap(), 600).await.unwrap();
    assert_eq!(store.load(&named.id).await.unwrap(), Some(named));
}

#[tokio::test]
async fn sessions_this_store_writes_decode_as_tower_sessions_redis_store_reads_them() {
    let server = &servers(1)[0];
    let store = MultiRedisStore::builder().backend(Backend::url("main", server.url())).build().await.unwrap();
    let mut rec = record("ada");
    store.create(&mut rec).await.unwrap();
    let key = rec.id.to_string();
    let bytes = raw_get(server, &key).await.expect("stored under the bare id");
    let decoded: Record = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(decoded, rec);
    assert_eq!(bytes, rmp_serde::to_vec(&rec).unwrap());
    // The key expires with the record.
    let expected = (rec.expiry_date - OffsetDateTime::now_utc()).whole_milliseconds() as i64;
    let ttl = pttl(server, &key).await;
    assert!((expected - ttl).abs() < 1_000, "pttl {ttl} vs {expected}");
}
