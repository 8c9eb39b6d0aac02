//! The harness against real processes: `sh` scripts that print, exit, trap signals and leave
//! children of their own behind.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use attune_harness::{Error, OnDrop, Service, Signal, Stopped};

const WAIT: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        !matches!(state, Some(Some('Z' | 'X')))
    })
}

fn gone_within(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !running(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts a script whose background child prints its pid; returns the service and that pid.
fn with_grandchild(script: &str) -> (Service, u32) {
    let mut s = Service::spawn("grandparent", sh(script)).unwrap();
    let line = s.wait_for_line("child ", WAIT).unwrap();
    let pid = line.trim_start_matches("child ").trim().parse().unwrap();
    assert!(running(pid));
    (s, pid)
}

#[test]
fn dropping_kills_the_whole_group() {
    let (s, grandchild) = with_grandchild("sleep 600 & echo child $!; wait");
    let leader = s.id();
    drop(s);
    assert!(gone_within(leader, WAIT), "leader {leader} survived");
    assert!(
        gone_within(grandchild, WAIT),
        "grandchild {grandchild} survived"
    );
}

#[test]
fn the_group_is_killed_even_when_the_leader_has_exited() {
    // The leader exits at once and leaves its child running, as a crashed wrangler would leave
    // workerd.
    let (mut s, grandchild) = with_grandchild("sleep 600 & echo child $!");
    let deadline = Instant::now() + WAIT;
    while s.is_running() {
        assert!(Instant::now() < deadline, "the leader did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running(grandchild));
    drop(s);
    assert!(
        gone_within(grandchild, WAIT),
        "grandchild {grandchild} survived"
    );
}

#[test]
fn stop_lets_the_group_exit_cleanly() {
    let mut s = Service::spawn(
        "trapper",
        sh("trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done"),
    )
    .unwrap();
    s.wait_for_line("ready", WAIT).unwrap();
    let stopped = s.stop(WAIT).unwrap();
    match stopped {
        Stopped::Exited(status) => assert_eq!(status.code(), Some(3)),
        Stopped::Killed => panic!("killed, not stopped: {}", s.output()),
    }
    s.wait_for_line("got TERM", WAIT).unwrap();
}

#[test]
fn stop_kills_what_ignores_sigterm() {
    let (mut s, grandchild) =
        with_grandchild("trap '' TERM; sleep 600 & echo child $!; while :; do sleep 0.05; done");
    let started = Instant::now();
    assert_eq!(s.stop(Duration::from_millis(300)).unwrap(), Stopped::Killed);
    assert!(started.elapsed() < WAIT);
    assert!(!s.is_running());
    assert!(gone_within(grandchild, WAIT));
}

#[test]
fn terminate_on_drop_sends_sigterm_first() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("terminated");
    let script = format!(
        "trap 'touch {}; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut s = Service::spawn("graceful", sh(&script))
        .unwrap()
        .on_drop(OnDrop::Terminate { grace: WAIT });
    s.wait_for_line("ready", WAIT).unwrap();
    drop(s);
    assert!(marker.exists(), "the trap did not run");

    // The default is SIGKILL: no trap runs.
    let marker = dir.path().join("killed");
    let script = format!(
        "trap 'touch {}; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut s = Service::spawn("killed", sh(&script)).unwrap();
    s.wait_for_line("ready", WAIT).unwrap();
    drop(s);
    assert!(!marker.exists(), "SIGTERM was sent");
}

#[test]
fn an_early_exit_fails_the_wait_with_the_output() {
    let mut s =
        Service::spawn("quitter", sh("echo to stdout; echo to stderr >&2; exit 7")).unwrap();
    let err = s.wait_for_line("never printed", WAIT).unwrap_err();
    let Error::Exited {
        name,
        status,
        output,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(name, "quitter");
    assert_eq!(status.code(), Some(7));
    assert!(
        output.contains("to stdout") && output.contains("to stderr"),
        "{output}"
    );
    assert!(err.to_string().contains("to stderr"));
    assert!(s.check().is_err());
}

#[test]
fn a_wait_times_out_naming_what_it_waited_for() {
    let mut s = Service::spawn("sleeper", sh("echo hello; sleep 600")).unwrap();
    let started = Instant::now();
    let err = s
        .wait_for_line("goodbye", Duration::from_millis(300))
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let message = err.to_string();
    assert!(
        message.starts_with("sleeper: print \"goodbye\": not within"),
        "{message}"
    );
    assert!(message.contains("hello"), "{message}");
    assert!(s.is_running());
}

#[test]
fn a_logged_service_writes_its_log_and_quotes_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let mut s = Service::spawn_logged(
        "logger",
        sh("i=0; while [ $i -lt 40 ]; do echo line $i; i=$((i+1)); done; echo err >&2; exit 1"),
        &log,
    )
    .unwrap();
    assert_eq!(s.wait_for_line("line 39", WAIT).unwrap(), "line 39");
    let err = s
        .wait_until("never", WAIT, || None::<()>)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("last lines of {}", log.display())),
        "{err}"
    );
    assert!(err.contains("line 39") && err.contains("err"), "{err}");
    assert!(!err.contains("line 5\n"), "only the end is quoted: {err}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("line 0\n") && text.contains("err\n"));
}

#[test]
fn an_appending_service_keeps_earlier_runs_and_waits_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let mut first =
        Service::spawn_appending("first", sh("echo ready first; exit 3"), &log).unwrap();
    first.wait_for_line("ready", WAIT).unwrap();
    drop(first);

    let mut second = Service::spawn_appending(
        "second",
        sh("sleep 0.3; echo ready second; sleep 600"),
        &log,
    )
    .unwrap();
    // The first run's "ready" is in the file but is not this run's.
    assert_eq!(second.wait_for_line("ready", WAIT).unwrap(), "ready second");
    assert!(!second.output().contains("first"), "{}", second.output());
    second.kill().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, "ready first\nready second\n");
}

#[test]
fn another_thread_can_kill_the_group() {
    let (mut s, grandchild) = with_grandchild("sleep 600 & echo child $!; wait");
    let group = s.group();
    std::thread::spawn(move || group.kill().unwrap())
        .join()
        .unwrap();
    let status = s
        .wait_until("the leader dies", WAIT, || None::<()>)
        .unwrap_err();
    assert!(matches!(status, Error::Exited { .. }), "{status:?}");
    assert!(gone_within(grandchild, WAIT));
}

#[test]
fn signals_reach_the_group() {
    let mut s = Service::spawn(
        "usr1",
        sh("trap 'echo got USR1' USR1; echo ready; while :; do sleep 0.05; done"),
    )
    .unwrap();
    s.wait_for_line("ready", WAIT).unwrap();
    s.signal(Signal::SIGUSR1).unwrap();
    s.wait_for_line("got USR1", WAIT).unwrap();
}

#[test]
fn readiness_waits_see_a_listener() {
    let port = attune_harness::free_port().unwrap();
    // The service only has to be alive; the listener comes up late, in this process.
    let mut s = Service::spawn("sleeper", sh("sleep 600")).unwrap();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        for conn in listener.incoming().take(3) {
            let mut conn = conn.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let status = if request.starts_with(b"GET /ok ") {
                "200 OK"
            } else {
                "404 Not Found"
            };
            let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        }
    });
    s.wait_for_port(port, WAIT).unwrap();
    s.wait_http(port, "/ok", WAIT).unwrap();
    let err = s
        .wait_http(port, "/missing", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    drop(server);
}

#[test]
fn a_missing_program_is_a_spawn_error() {
    let err = Service::spawn("nothing", Command::new("/nonexistent/attune")).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    assert_eq!(err.to_string(), "starting nothing");
}

/// Set for the runner that `a_dead_runner_leaves_nothing_behind` starts and kills.
const RUNNER: &str = "ATTUNE_HARNESS_RUNNER";

/// Not a test of its own: the process a test runner would be, started by
/// `a_dead_runner_leaves_nothing_behind` (which sets `RUNNER`): it starts a service with a
/// child of its own, says their pids, and waits to be killed.
#[test]
#[ignore = "started by a_dead_runner_leaves_nothing_behind"]
fn runner_that_dies() {
    if std::env::var_os(RUNNER).is_none() {
        return;
    }
    let (s, grandchild) = with_grandchild("sleep 600 & echo child $!; wait");
    println!("pids {} {grandchild}", s.id());
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_dead_runner_leaves_nothing_behind() {
    for signal in [Signal::SIGKILL, Signal::SIGINT] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "runner_that_dies", "--ignored", "--nocapture"])
            .env(RUNNER, "1");
        let mut runner = Service::spawn("runner", cmd).unwrap();
        let line = runner.wait_for_line("pids ", WAIT).unwrap();
        let pids: Vec<u32> = line
            .trim_start_matches("pids ")
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "{line}");
        assert!(pids.iter().all(|&p| running(p)));
        // The runner dies without running any drop.
        runner.signal(signal).unwrap();
        let deadline = Instant::now() + WAIT;
        while runner.is_running() {
            assert!(Instant::now() < deadline, "the runner survived {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in pids {
            assert!(
                gone_within(pid, WAIT),
                "{pid} survived its runner's {signal}"
            );
        }
    }
}
