//! Resolves what the Kafka checks need, each step idempotent (a warm call only compares files):
//! the broker's jars (Maven Central), the Kafka Streams comparison app (built with Maven), and
//! the Python client (PyPI, into a venv).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::{Error, KAFKA_VERSION, Result, cache_dir, io, lab_dir, repo_root};

/// Something provisioned: where it is, and whether this call had to fetch or build it.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub path: PathBuf,
    pub fresh: bool,
}

/// The directory of the broker's jars, for `java -cp '<dir>/*'`.
pub fn broker_jars_dir() -> PathBuf {
    cache_dir()
        .join(format!("kafka-{KAFKA_VERSION}"))
        .join("broker")
}

/// Resolves the broker's jars with `mvn dependency:copy-dependencies` unless the directory
/// already holds the resolution of the current `lab/kafka/broker/pom.xml` (a copy of the pom is
/// kept beside the jars as the stamp, so editing the pom resolves again).
pub fn broker_jars() -> Result<Provisioned> {
    let pom_path = lab_dir().join("broker").join("pom.xml");
    let pom = fs::read(&pom_path).map_err(io(format!("reading {}", pom_path.display())))?;
    let dir = broker_jars_dir();
    let stamp = dir.join(".pom.xml");
    if fs::read(&stamp).ok().as_deref() == Some(pom.as_slice()) && has_jar(&dir, "kafka_2.13-") {
        return Ok(Provisioned {
            path: dir,
            fresh: false,
        });
    }
    require("mvn", "install Maven (Debian: `apt-get install maven`)")?;
    require(
        "java",
        "install Java 17+ (Debian: `apt-get install openjdk-17-jdk-headless`)",
    )?;
    // Resolved next to the final directory and renamed into place, so an interrupted run never
    // leaves a half-filled directory that looks complete.
    let parent = dir
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent", dir.display())))?;
    fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    let staging = parent.join(format!("broker.partial-{}", std::process::id()));
    remove_dir_if_present(&staging)?;
    let mut mvn = Command::new("mvn");
    mvn.current_dir(lab_dir().join("broker"))
        .args(["-q", "-B", "dependency:copy-dependencies"])
        .arg(format!("-DoutputDirectory={}", staging.display()));
    run(&mut mvn)?;
    if !has_jar(&staging, "kafka_2.13-") {
        return Err(Error::Invalid(format!(
            "mvn finished but {} holds no kafka_2.13 jar",
            staging.display()
        )));
    }
    fs::write(staging.join(".pom.xml"), &pom).map_err(io("writing the pom stamp"))?;
    remove_dir_if_present(&dir)?;
    fs::rename(&staging, &dir).map_err(io(format!("moving jars into {}", dir.display())))?;
    Ok(Provisioned {
        path: dir,
        fresh: true,
    })
}

/// `lab/kafka/streams/`: the Kafka Streams comparison app's Maven module.
pub fn streams_app_dir() -> PathBuf {
    lab_dir().join("streams")
}

/// The comparison app's jar; its dependencies are in `lib/` beside it.
pub fn streams_app_jar() -> PathBuf {
    streams_app_dir()
        .join("target")
        .join("attune-streams-bench.jar")
}

/// Builds the Kafka Streams comparison app (`mvn package`) unless its jar is newer than the pom
/// and every source file.
pub fn streams_app() -> Result<Provisioned> {
    let module = streams_app_dir();
    let jar = streams_app_jar();
    let built = fs::metadata(&jar).and_then(|m| m.modified()).ok();
    let newest_input = newest_mtime(&[module.join("pom.xml"), module.join("src")])?;
    if built.is_some_and(|b| b >= newest_input) && module.join("target").join("lib").is_dir() {
        return Ok(Provisioned {
            path: jar,
            fresh: false,
        });
    }
    require("mvn", "install Maven (Debian: `apt-get install maven`)")?;
    let mut mvn = Command::new("mvn");
    mvn.current_dir(&module)
        .args(["-q", "-B", "package", "-DskipTests"]);
    run(&mut mvn)?;
    if !jar.is_file() {
        return Err(Error::Invalid(format!(
            "mvn package finished but {} is missing",
            jar.display()
        )));
    }
    Ok(Provisioned {
        path: jar,
        fresh: true,
    })
}

/// `target/kafka-venv/`: the venv holding the Python Kafka client.
pub fn python_venv_dir() -> PathBuf {
    repo_root().join("target").join("kafka-venv")
}

/// The venv's interpreter, for `lab/kafka/produce.py`.
pub fn python() -> PathBuf {
    python_venv_dir().join("bin").join("python")
}

/// Creates `target/kafka-venv` and installs `lab/kafka/requirements.txt` into it, unless the
/// venv was made from the same requirements (a copy is kept in the venv as the stamp).
pub fn python_client() -> Result<Provisioned> {
    let req_path = lab_dir().join("requirements.txt");
    let req = fs::read(&req_path).map_err(io(format!("reading {}", req_path.display())))?;
    let venv = python_venv_dir();
    let stamp = venv.join("attune-requirements.txt");
    let python = python();
    if python.is_file() && fs::read(&stamp).ok().as_deref() == Some(req.as_slice()) {
        return Ok(Provisioned {
            path: python,
            fresh: false,
        });
    }
    require(
        "python3",
        "install Python 3 with venv (Debian: `apt-get install python3-venv`)",
    )?;
    if !python.is_file() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&req_path))?;
    fs::write(&stamp, &req).map_err(io(format!("writing {}", stamp.display())))?;
    Ok(Provisioned {
        path: python,
        fresh: true,
    })
}

fn has_jar(dir: &Path, prefix: &str) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".jar")
        })
    })
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", dir.display()))(e)),
    }
}

/// The newest modification time of the given files and of every file below the given
/// directories.
fn newest_mtime(paths: &[PathBuf]) -> Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let meta = fs::metadata(&path).map_err(io(format!("reading {}", path.display())))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io(format!("listing {}", path.display())))? {
                stack.push(
                    entry
                        .map_err(io(format!("listing {}", path.display())))?
                        .path(),
                );
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(modified);
        }
    }
    Ok(newest)
}

/// Fails with a hint when `tool` is not on PATH.
pub(crate) fn require(tool: &'static str, hint: &'static str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(Error::MissingTool { tool, hint })
    }
}

/// Runs a command to completion, its output captured and shown only if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("starting {command}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let output = if output.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", output.trim_end())
    };
    Err(Error::Command {
        command,
        status: out.status.to_string(),
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_mtime_sees_files_below_directories() {
        let dir = std::env::temp_dir().join(format!("attune-harness-mtime-{}", std::process::id()));
        fs::create_dir_all(dir.join("a").join("b")).unwrap();
        let old = dir.join("old");
        fs::write(&old, "x").unwrap();
        let before = newest_mtime(std::slice::from_ref(&old)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(dir.join("a").join("b").join("new"), "y").unwrap();
        let after = newest_mtime(&[old, dir.join("a")]).unwrap();
        assert!(after > before, "{after:?} should be newer than {before:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
