use super::*;
use crate::config::SourceKind;
use clap::Parser;

#[test]
fn an_offline_feed_in_kafka_mode_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        source: SourceKind::Kafka,
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let lines = vec![br#"{"v":1}"#.to_vec()];
    let err = rt
        .block_on(feed(&cfg, None, None, "replay", lines, 10))
        .unwrap_err();
    assert!(matches!(err, Error::NeedsEmbeddedLog(_)), "{err}");
    assert!(err.to_string().contains("--url"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// `serve --source` picks the source; `replay --source` stays the watermark source's name
/// (a global `--source` would clash with it).
#[test]
fn source_flags_do_not_clash() {
    let cli = Cli::try_parse_from([
        "attune-origin",
        "serve",
        "--source",
        "kafka",
        "--brokers",
        "b:9092",
        "--kafka-setting",
        "security.protocol=SASL_SSL",
    ])
    .unwrap();
    assert!(matches!(
        cli.command,
        Command::Serve(ServeArgs {
            source: Some(SourceKind::Kafka)
        })
    ));
    let mut cfg = Config::default();
    apply_kafka_flags(&cli.global, &mut cfg).unwrap();
    assert_eq!(cfg.kafka.brokers, "b:9092");
    assert_eq!(cfg.kafka.settings["security.protocol"], "SASL_SSL");
    let cli = Cli::try_parse_from(["attune-origin", "replay", "e.jsonl", "--source", "x"]).unwrap();
    assert!(matches!(cli.command, Command::Replay(ReplayArgs { ref source, .. }) if source == "x"));
}
