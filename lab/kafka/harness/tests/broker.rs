//! Starts a real broker. Ignored by default (the first run resolves ~45 MB of jars from Maven
//! Central; a start takes seconds):
//! `cargo test -p attune-kafka-harness -- --ignored --test-threads 1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use attune_kafka_harness::{Broker, BrokerOptions};

/// Sends an ApiVersions v0 request and returns the response's correlation id, error code and
/// number of API keys: proof that a Kafka broker, not just any listener, answers on the port.
fn api_versions(bootstrap: &str) -> (i32, i16, i32) {
    let mut stream = TcpStream::connect(bootstrap).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let client_id = b"attune-harness-test";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // api_key: ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // api_version
    body.extend_from_slice(&4242i32.to_be_bytes()); // correlation_id
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request).unwrap();

    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    let correlation = i32::from_be_bytes(response[0..4].try_into().unwrap());
    let error = i16::from_be_bytes(response[4..6].try_into().unwrap());
    let keys = i32::from_be_bytes(response[6..10].try_into().unwrap());
    (correlation, error, keys)
}

#[test]
#[ignore = "starts a real Kafka broker"]
fn starts_answers_restarts_and_cleans_up() {
    let mut broker = Broker::start(&BrokerOptions::for_tests()).unwrap();
    eprintln!(
        "broker on {} started in {:?}",
        broker.bootstrap_servers(),
        broker.startup_time()
    );
    let (correlation, error, keys) = api_versions(&broker.bootstrap_servers());
    assert_eq!(correlation, 4242);
    assert_eq!(error, 0);
    assert!(keys > 40, "a 4.x broker lists dozens of APIs, got {keys}");

    // A crash and a restart on the same directory and port: the metadata log is reused, not
    // formatted again.
    let port = broker.port();
    let pid = broker.pid().unwrap();
    broker.kill();
    assert!(TcpStream::connect(broker.bootstrap_servers()).is_err());
    broker.restart().unwrap();
    assert_eq!(broker.port(), port);
    assert_ne!(broker.pid().unwrap(), pid);
    assert_eq!(api_versions(&broker.bootstrap_servers()).1, 0);
    let log = std::fs::read_to_string(broker.log_path()).unwrap();
    assert_eq!(log.matches("Kafka Server started").count(), 2);

    let dir = broker.dir().to_owned();
    let pid = broker.pid().unwrap();
    drop(broker);
    assert!(!dir.exists(), "the temporary directory is removed on drop");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the broker process is gone after drop"
    );
}

#[test]
#[ignore = "starts a real Kafka broker"]
fn a_kept_directory_survives_a_clean_stop() {
    let dir = std::env::temp_dir().join(format!("attune-kafka-kept-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = BrokerOptions {
        dir: Some(dir.clone()),
        ..BrokerOptions::for_tests()
    };
    let started = std::time::Instant::now();
    let mut broker = Broker::start(&options).unwrap();
    eprintln!(
        "format + start: {:?} (start alone {:?})",
        started.elapsed(),
        broker.startup_time()
    );
    let port = broker.port();
    let stopping = std::time::Instant::now();
    broker.stop(Duration::from_secs(30)).unwrap();
    eprintln!("clean stop: {:?}", stopping.elapsed());
    drop(broker);
    assert!(dir.join("data").join("meta.properties").is_file());

    // Started again from the same directory: same port, no new format.
    let broker = Broker::start(&options).unwrap();
    eprintln!("restart on the kept directory: {:?}", broker.startup_time());
    assert_eq!(broker.port(), port);
    assert_eq!(api_versions(&broker.bootstrap_servers()).1, 0);
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "starts a real Kafka broker and installs the Python client"]
fn a_python_client_produces_and_consumes_keyed_events() {
    let python = attune_kafka_harness::provision::python_client()
        .unwrap()
        .path;
    let broker = Broker::start(&BrokerOptions::for_tests()).unwrap();
    let script = attune_kafka_harness::lab_dir().join("produce.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--bootstrap", &broker.bootstrap_servers()])
        .args(["--count", "1000", "--users", "50", "--verify"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "produce.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap();
    assert!(summary.contains(r#""produced": 1000"#), "{summary}");
    assert!(summary.contains(r#""consumed": 1000"#), "{summary}");
    assert!(summary.contains(r#""ok": true"#), "{summary}");
}
