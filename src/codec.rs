//! The wire format: a [`Record`] as MessagePack, exactly as
//! `tower-sessions-redis-store` stores it.
//!
//! * value: `rmp_serde::to_vec(&record)` — the compact (array) form; the named
//!   (map) form written by `rmp_serde::to_vec_named` is accepted on decode;
//! * expiry: the record's `expiry_date`, sent as `PXAT` milliseconds (the
//!   other crate sends `EXAT` seconds; both expire the key at the same second).
//!
//! ```
//! use tower_sessions_core::session::{Id, Record};
//! use tower_sessions_multi_redis_store::codec;
//!
//! let record = Record {
//!     id: Id(1),
//!     data: Default::default(),
//!     expiry_date: time::OffsetDateTime::UNIX_EPOCH,
//! };
//! let bytes = codec::encode(&record).unwrap();
//! assert_eq!(bytes, rmp_serde::to_vec(&record).unwrap());
//! assert_eq!(codec::decode(&bytes).unwrap(), record);
//! ```

use serde::Deserialize;
use time::OffsetDateTime;
use tower_sessions_core::session::Record;

/// Encodes a record the way `tower-sessions-redis-store` does.
///
/// # Errors
///
/// When a value in the session data cannot be represented in MessagePack.
pub fn encode(record: &Record) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    // What `rmp_serde::to_vec` writes, into a buffer sized for a typical
    // session: one allocation instead of one per doubling from empty.
    let mut bytes = Vec::with_capacity(256);
    rmp_serde::encode::write(&mut bytes, record)?;
    Ok(bytes)
}

/// Decodes a stored value (compact or named MessagePack form).
///
/// Never panics, whatever the bytes.
///
/// # Errors
///
/// When the bytes are not a MessagePack session record.
pub fn decode(bytes: &[u8]) -> Result<Record, rmp_serde::decode::Error> {
    Record::deserialize(&mut deserializer(bytes))
}

/// How deep a stored value may nest. Each level is a stack frame or more
/// (decoding, then dropping, `serde_json::Value`): rmp-serde's own limit,
/// 1024, overflows a tokio worker's 2 MiB stack in a debug build, and a
/// stack overflow aborts the whole process. Above serde_json's own parsing
/// limit (128) with a margin, so data parsed from JSON always loads again.
const MAX_DEPTH: usize = 256;

fn deserializer(bytes: &[u8]) -> rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'_, [u8]>> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(MAX_DEPTH);
    deserializer
}

/// Checks that `bytes` has the shape of a session record (id, map with string
/// keys, expiry) and returns its expiry, without building the session data:
/// the bulk migrator's fast path.
///
/// # Errors
///
/// When the bytes are not a MessagePack session record.
pub(crate) fn decode_expiry(bytes: &[u8]) -> Result<OffsetDateTime, rmp_serde::decode::Error> {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[allow(dead_code)]
        id: tower_sessions_core::session::Id,
        #[allow(dead_code)]
        data: SkippedMap,
        expiry_date: OffsetDateTime,
    }
    Shape::deserialize(&mut deserializer(bytes)).map(|shape| shape.expiry_date)
}

/// A map with string keys whose entries are checked and dropped.
struct SkippedMap;

impl<'de> serde::Deserialize<'de> for SkippedMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SkippedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of session data")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SkippedMap, A::Error> {
                while map.next_entry::<&'de str, serde::de::IgnoredAny>()?.is_some() {}
                Ok(SkippedMap)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The absolute expiry to send with `PXAT`: milliseconds since the Unix epoch,
/// at least 1 (Redis refuses 0 and negative times; such a record is expired
/// anyway and Redis drops the key at once).
pub fn expiry_millis(expiry_date: OffsetDateTime) -> u64 {
    let millis = expiry_date.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(millis).unwrap_or(0).max(1)
}

/// Whether the record is still alive now.
pub(crate) fn is_live(record: &Record) -> bool {
    record.expiry_date > OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    /// A value nested deeper than any session holds is an error, not a
    /// stack overflow that aborts the process, on a thread with a tokio
    /// worker's stack (2 MiB), in a debug build.
    #[test]
    fn deeply_nested_data_is_no_stack_overflow() {
        let rec = Record {
            id: tower_sessions_core::session::Id::default(),
            data: [("x".to_owned(), serde_json::json!(0))].into(),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        };
        let bytes = encode(&rec).unwrap();
        let at = bytes.windows(3).position(|w| w == [0xa1, b'x', 0x00]).unwrap() + 2;
        // `depth` arrays of one element each, around the 0.
        let nest = |depth| [&bytes[..at], &vec![0x91; depth], &bytes[at..]].concat();
        for depth in [200, 1_000, 100_000] {
            let nested = nest(depth);
            let decoded = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || decode(&nested).map(|r| r.data.len()).map_err(|e| e.to_string()))
                .unwrap()
                .join()
                .expect("no stack overflow");
            assert_eq!(decoded.is_ok(), depth < MAX_DEPTH, "{depth}: {decoded:?}");
            let nested = nest(depth);
            let expiry = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || decode_expiry(&nested).is_ok())
                .unwrap()
                .join()
                .expect("no stack overflow");
            assert_eq!(expiry, depth < MAX_DEPTH, "{depth}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_decoder() {
        let record = Record {
            id: tower_sessions_core::session::Id(7),
            data: [("a".to_owned(), serde_json::json!({"b": [1, 2]}))].into(),
            expiry_date: OffsetDateTime::UNIX_EPOCH + Duration::days(3),
        };
        let bytes = encode(&record).unwrap();
        assert_eq!(decode_expiry(&bytes).unwrap(), record.expiry_date);
        let named = rmp_serde::to_vec_named(&record).unwrap();
        assert_eq!(decode_expiry(&named).unwrap(), record.expiry_date);
        for bad in [&b""[..], b"\x93\x01", b"garbage", &bytes[..bytes.len() - 1]] {
            assert!(decode_expiry(bad).is_err() && decode(bad).is_err());
        }
    }

    #[test]
    fn expiry_is_clamped_to_a_positive_instant() {
        assert_eq!(expiry_millis(OffsetDateTime::UNIX_EPOCH - Duration::days(1)), 1);
        assert_eq!(expiry_millis(OffsetDateTime::UNIX_EPOCH + Duration::milliseconds(1500)), 1500);
    }

    mod props {
        use proptest::prelude::*;
        use tower_sessions_core::session::Id;

        use super::super::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                (-1e300f64..1e300).prop_map(serde_json::Value::from),
                ".{0,40}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                    prop::collection::hash_map(".{0,12}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn record() -> impl Strategy<Value = Record> {
            (
                any::<i128>(),
                prop::collection::hash_map(".{0,16}", json_value(), 0..8),
                -62_000_000_000i64..250_000_000_000,
                0u32..1_000_000_000,
            )
                .prop_map(|(id, data, secs, nanos)| Record {
                    id: Id(id),
                    data,
                    expiry_date: OffsetDateTime::from_unix_timestamp(secs).unwrap()
                        + time::Duration::nanoseconds(nanos.into()),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let full = decode(&bytes);
                let fast = decode_expiry(&bytes);
                // The fast path never accepts what the full decoder refuses for its shape.
                if let Ok(record) = &full {
                    prop_assert_eq!(fast.ok(), Some(record.expiry_date));
                }
            }

            #[test]
            fn decoding_corrupted_records_never_panics(rec in record(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
                let mut bytes = encode(&rec).unwrap();
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= byte | 1;
                }
                let _ = decode(&bytes);
                let _ = decode_expiry(&bytes);
            }

            #[test]
            fn records_round_trip(rec in record()) {
                let bytes = encode(&rec).unwrap();
                prop_assert_eq!(&bytes, &rmp_serde::to_vec(&rec).unwrap());
                prop_assert_eq!(decode(&bytes).unwrap(), rec.clone());
                prop_assert_eq!(decode_expiry(&bytes).unwrap(), rec.expiry_date);
            }
        }
    }
}
