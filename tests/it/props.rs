//! Property tests of configuration parsing: arbitrary text never panics.
//! (The codec's are unit tests in `src/codec.rs`.)

use proptest::prelude::*;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_multi_redis_store::Config;

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
