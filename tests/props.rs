//! Issue 5, show 5: property tests. Decoding arbitrary bytes never panics;
//! parsing arbitrary config text never panics; records round-trip.

use proptest::prelude::*;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::{Config, codec};

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
            expiry_date: OffsetDateTime::from_unix_timestamp(secs).unwrap() + time::Duration::nanoseconds(nanos.into()),
        })
}

/// Text that looks like a config file, so the parser gets past the first line.
fn config_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("[[backends]]\n".to_owned()),
        Just("name = \"a\"\n".to_owned()),
        Just("modes = [\"read\", \"write\"]\n".to_owned()),
        Just("url = \"redis://h:1\"\n".to_owned()),
        Just("host = \"h\"\nport = 70000\n".to_owned()),
        Just("socket_timeout = -1e309\n".to_owned()),
        Just("{\"backends\": [".to_owned()),
        Just("[{\"backend\": 0, \"modes\": [\"read\"], \"setting\": {\"SESSION_REDIS_PORT\": null}}]".to_owned()),
        ".{0,20}",
    ];
    prop::collection::vec(token, 0..12).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let full = codec::decode(&bytes);
        let fast = codec::decode_expiry(&bytes);
        // The fast path never accepts what the full decoder refuses for its shape.
        if let Ok(record) = &full {
            prop_assert_eq!(fast.ok(), Some(record.expiry_date));
        }
    }

    #[test]
    fn decoding_corrupted_records_never_panics(rec in record(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = codec::encode(&rec).unwrap();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= byte | 1;
        }
        let _ = codec::decode(&bytes);
        let _ = codec::decode_expiry(&bytes);
    }

    #[test]
    fn records_round_trip(rec in record()) {
        let bytes = codec::encode(&rec).unwrap();
        prop_assert_eq!(&bytes, &rmp_serde::to_vec(&rec).unwrap());
        prop_assert_eq!(codec::decode(&bytes).unwrap(), rec.clone());
        prop_assert_eq!(codec::decode_expiry(&bytes).unwrap(), rec.expiry_date);
    }

    #[test]
    fn parsing_arbitrary_config_text_never_panics(text in ".{0,300}", like in config_like()) {
        for t in [&text, &like] {
            if let Ok(config) = Config::from_toml_str(t) {
                let _ = config.into_builder().map(|b| b.validate());
            }
            if let Ok(config) = Config::from_json_str(t) {
                let _ = config.into_builder().map(|b| b.validate());
            }
        }
    }

    /// Every duration a file accepts works, at its limits too; anything else
    /// is refused naming the field. Never a panic (an overflowing `Instant`).
    #[test]
    fn durations_at_their_limits_work_or_are_refused_by_name(
        field in prop::sample::select(vec!["socket_timeout", "deadline", "breaker_cool_down", "tombstone_ttl"]),
        seconds in prop_oneof![
            Just(1e19), Just(f64::MAX), Just(86_400.0), Just(86_400.001), Just(2_592_000.0), Just(1e-9),
            Just(0.0), Just(-1.0), Just(f64::NAN), 0.0f64..1e12,
        ],
    ) {
        let (top, backend) = match field {
            "deadline" | "tombstone_ttl" => (format!("{field} = {seconds:?}\n"), String::new()),
            _ => (String::new(), format!("{field} = {seconds:?}\n")),
        };
        let text = format!(
            "{top}[[backends]]\nname = \"a\"\nmodes = [\"read\", \"write\"]\nurl = \"redis://127.0.0.1:1\"\n\
             socket_timeout = 0.05\n{backend}"
        );
        let built = Config::from_toml_str(&text).and_then(|c| c.into_builder()).and_then(|b| {
            b.validate()?;
            Ok(b)
        });
        match built {
            Err(err) => prop_assert!(err.to_string().contains(field), "{err}"),
            Ok(builder) => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    let store = builder.build().await.unwrap();
                    // Nothing listens on port 1: every operation fails, and none panics.
                    let rec = Record { id: Id::default(), data: Default::default(), expiry_date: OffsetDateTime::now_utc() };
                    use tower_sessions_core::SessionStore;
                    assert!(store.load(&rec.id).await.is_err());
                    assert!(store.save(&rec).await.is_err());
                    assert!(store.delete(&rec.id).await.is_err());
                });
            }
        }
    }
}
