//! A child process leading its own process group, with its output kept and the group ended
//! on drop.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use process_wrap::std::{ChildWrapper, CommandWrap, ProcessGroup};

use crate::http::{http_get, port_is_free};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);
/// How long an exited process's output readers get to reach the end of its pipes: a
/// grandchild that kept them open must not hold up the error.
const DRAIN: Duration = Duration::from_secs(2);
/// How much of a log file an error message quotes.
const LOG_TAIL_LINES: usize = 30;

/// What went wrong with a child process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting {name}")]
    Spawn {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("opening the log file {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("waiting for {name}")]
    Wait {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited ({status}):\n{output}")]
    Exited {
        name: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{name}: {what}: not within {timeout:?}:\n{output}")]
    Timeout {
        name: String,
        what: String,
        timeout: Duration,
        output: String,
    },
}

/// What dropping a [`Service`] does to its process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL at once: tests, where nothing is worth a clean end and a crash test wants none.
    Kill,
    /// SIGTERM, up to `grace` for the group to exit, then SIGKILL.
    Terminate { grace: Duration },
}

/// How [`Service::stop`] ended the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself within the grace period (its status).
    Exited(ExitStatus),
    /// It was still running after the grace period and was killed.
    Killed,
}

/// A process group, by its leader's id: signals reach every process in it. `Copy`, so another
/// thread can signal a group whose [`Service`] it does not own (a crash test's killer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group(Pid);

impl Group {
    /// Sends `signal` to every process of the group; a group that is already gone is not an
    /// error.
    pub fn signal(self, signal: Signal) -> io::Result<()> {
        match killpg(self.0, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGKILL to the whole group.
    pub fn kill(self) -> io::Result<()> {
        self.signal(Signal::SIGKILL)
    }

    /// Whether any process of the group is still there.
    pub fn is_alive(self) -> bool {
        killpg(self.0, None).is_ok()
    }
}

#[derive(Clone, Debug)]
enum Output {
    /// Lines of stdout and stderr, in the order they were read.
    Captured(Arc<Mutex<Vec<String>>>),
    /// Both streams appended to `path`, from byte `from` on (what was there before is another
    /// run's, which neither the waits nor the error messages look at).
    Log { path: PathBuf, from: u64 },
}

impl Output {
    fn text(&self) -> String {
        match self {
            Output::Captured(lines) => lines.lock().map(|l| l.join("\n")).unwrap_or_default(),
            Output::Log { path, from } => {
                let text = read_from(path, *from);
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                format!("last lines of {}:\n{}", path.display(), tail.join("\n"))
            }
        }
    }

    /// The first printed line that contains `needle`.
    fn find(&self, needle: &str) -> Option<String> {
        match self {
            Output::Captured(lines) => lines
                .lock()
                .ok()?
                .iter()
                .find(|l| l.contains(needle))
                .cloned(),
            Output::Log { path, from } => read_from(path, *from)
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string),
        }
    }
}

/// The text of `path` from byte `from` on; empty if it cannot be read.
fn read_from(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

/// Kills a group when this process dies without dropping its [`Service`] (SIGKILL, or Ctrl-C in
/// the terminal, whose SIGINT does not reach the children's own groups). A `sh` in a group of
/// its own that ignores the terminal's signals and reads its stdin, a pipe only this process
/// holds; the kernel closes the pipe when this process dies, however it dies, and the read
/// returns. (`exec kill`: dash's built-in kill takes no `--` before a negative process id.)
const WATCHDOG: &str = r#"trap '' INT TERM HUP QUIT; read -r _; exec kill -s KILL -- "-$1""#;

#[derive(Debug)]
struct Watchdog(Child);

impl Watchdog {
    fn start(group: Group) -> io::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", WATCHDOG, "attune-harness-watchdog"])
            .arg(group.0.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        cmd.spawn().map(Watchdog)
    }

    /// Ends the watchdog without letting it signal (the group is gone, or going, already).
    fn dismiss(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process that leads its own process group; the group ends when this is dropped (see
/// [`OnDrop`]), or when this process dies.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Box<dyn ChildWrapper>,
    group: Group,
    watchdog: Watchdog,
    output: Output,
    /// The threads reading the pipes of a captured service.
    readers: Vec<JoinHandle<()>>,
    on_drop: OnDrop,
}

impl Service {
    /// Starts `cmd` with its stdout and stderr kept in memory ([`Service::output`]); stdin is
    /// closed. Killed with its group on drop.
    pub fn spawn(name: impl Into<String>, cmd: Command) -> Result<Self, Error> {
        let name = name.into();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut child = start(&name, cmd, Stdio::piped(), Stdio::piped())?;
        let mut readers = Vec::new();
        if let Some(out) = child.stdout().take() {
            readers.push(collect(out, Arc::clone(&lines)));
        }
        if let Some(err) = child.stderr().take() {
            readers.push(collect(err, Arc::clone(&lines)));
        }
        let mut service = Service::new(name, child, Output::Captured(lines))?;
        service.readers = readers;
        Ok(service)
    }

    /// Starts `cmd` with its stdout and stderr written to `log` (created, or truncated); stdin
    /// is closed. Killed with its group on drop.
    pub fn spawn_logged(name: impl Into<String>, cmd: Command, log: &Path) -> Result<Self, Error> {
        let name = name.into();
        let log_error = |source| Error::Log {
            path: log.to_path_buf(),
            source,
        };
        let out = File::create(log).map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = start(&name, cmd, out.into(), err.into())?;
        let output = Output::Log {
            path: log.to_path_buf(),
            from: 0,
        };
        Service::new(name, child, output)
    }

    /// Like [`Service::spawn_logged`], but appends to `log` (created if missing): a process
    /// restarted on the same log keeps the earlier runs' lines. The waits and
    /// [`Service::output`] see only this run's.
    pub fn spawn_appending(
        name: impl Into<String>,
        cmd: Command,
        log: &Path,
    ) -> Result<Self, Error> {
        let name = name.into();
        let log_error = |source| Error::Log {
            path: log.to_path_buf(),
            source,
        };
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_error)?;
        let from = out.metadata().map_err(log_error)?.len();
        let err = out.try_clone().map_err(log_error)?;
        let child = start(&name, cmd, out.into(), err.into())?;
        let output = Output::Log {
            path: log.to_path_buf(),
            from,
        };
        Service::new(name, child, output)
    }

    fn new(name: String, mut child: Box<dyn ChildWrapper>, output: Output) -> Result<Self, Error> {
        // The leader's pid is the group's id. Linux pids are below 2^22, so they fit an i32.
        let group = Group(Pid::from_raw(child.id() as i32));
        let watchdog = match Watchdog::start(group) {
            Ok(watchdog) => watchdog,
            Err(source) => {
                let _ = group.kill();
                let _ = child.wait();
                return Err(Error::Spawn {
                    name: format!("the watchdog of {name}"),
                    source,
                });
            }
        };
        Ok(Service {
            name,
            child,
            group,
            watchdog,
            output,
            readers: Vec::new(),
            on_drop: OnDrop::Kill,
        })
    }

    /// Sets what dropping this does (by default [`OnDrop::Kill`]).
    #[must_use]
    pub fn on_drop(mut self, on_drop: OnDrop) -> Self {
        self.on_drop = on_drop;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leader's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process group, to signal it from elsewhere.
    pub fn group(&self) -> Group {
        self.group
    }

    /// What the process printed so far: every line when kept in memory, the end of the log
    /// file (and its path) otherwise.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// The leader's exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        self.child.try_wait().map_err(|source| Error::Wait {
            name: self.name.clone(),
            source,
        })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Fails, with the output so far, if the leader has exited.
    pub fn check(&mut self) -> Result<(), Error> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => {
                // The leader's last lines may still be in its pipes when its exit is seen.
                self.drain_readers();
                Err(Error::Exited {
                    name: self.name.clone(),
                    status,
                    output: self.output(),
                })
            }
        }
    }

    fn drain_readers(&mut self) {
        let deadline = Instant::now() + DRAIN;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.readers.retain(|r| !r.is_finished());
    }

    /// Polls `ready` until it returns `Some`; fails when the process exits first or `timeout`
    /// passes (`what` names the wait in that error).
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = ready() {
                return Ok(value);
            }
            if let Err(exited) = self.check() {
                // What it printed before exiting counts: the readers have drained by now.
                return ready().ok_or(exited);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    name: self.name.clone(),
                    what: what.to_string(),
                    timeout,
                    output: self.output(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until a printed line contains `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String, Error> {
        let what = format!("print {needle:?}");
        let output = self.output.clone();
        self.wait_until(&what, timeout, || output.find(needle))
    }

    /// Waits until something accepts connections on 127.0.0.1:`port`.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) -> Result<(), Error> {
        let what = format!("listen on 127.0.0.1:{port}");
        self.wait_until(&what, timeout, || (!port_is_free(port)).then_some(()))
    }

    /// Waits until `GET path` on 127.0.0.1:`port` answers 200.
    pub fn wait_http(&mut self, port: u16, path: &str, timeout: Duration) -> Result<(), Error> {
        let what = format!("answer 200 to GET {path} on 127.0.0.1:{port}");
        self.wait_until(&what, timeout, || {
            http_get(port, path, &[])
                .is_ok_and(|r| r.status == 200)
                .then_some(())
        })
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        self.group.signal(signal)
    }

    /// SIGKILL to the whole group, then reaps the leader.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        let _ = self.group.kill();
        self.child.wait().map_err(|source| Error::Wait {
            name: self.name.clone(),
            source,
        })
    }

    /// SIGTERM to the group, then up to `grace` for the leader and the rest of the group to
    /// exit (a clean stop: the origin drains and flushes); what is still running then is
    /// killed.
    pub fn stop(&mut self, grace: Duration) -> Result<Stopped, Error> {
        let deadline = Instant::now() + grace;
        if self.try_wait()?.is_none() {
            let _ = self.group.signal(Signal::SIGTERM);
        }
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                // The leader is gone; its own children (workerd under wrangler) get the rest of
                // the grace period to finish.
                while self.group.is_alive() && Instant::now() < deadline {
                    std::thread::sleep(POLL);
                }
                let _ = self.group.kill();
                return Ok(Stopped::Exited(status));
            }
            std::thread::sleep(POLL);
        }
        self.kill()?;
        Ok(Stopped::Killed)
    }
}

impl Drop for Service {
    /// However the owner ends (a failed assertion included), nothing of the group outlives it.
    /// The group is signalled even when the leader has exited: its children may not have.
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Kill => {
                let _ = self.kill();
            }
            OnDrop::Terminate { grace } => {
                let _ = self.stop(grace);
            }
        }
        self.watchdog.dismiss();
    }
}

fn start(
    name: &str,
    mut cmd: Command,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Box<dyn ChildWrapper>, Error> {
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let mut cmd = CommandWrap::from(cmd);
    cmd.wrap(ProcessGroup::leader());
    cmd.spawn().map_err(|source| Error::Spawn {
        name: name.to_string(),
        source,
    })
}

/// Reads `stream` line by line into `sink` on a thread of its own (it ends with the stream).
fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut lines) = sink.lock() {
                lines.push(line);
            }
        }
    })
}
