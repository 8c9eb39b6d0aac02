//! The reader: records by offset, up to the durable end.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Source;
use super::record::{Decoded, FIRST_OFFSET, Record, decode_record, read_record_at};
use super::writer::End;
use crate::error::{Error, Result};

/// Reads the log by offset, up to the durable end.
pub struct LogReader {
    pub(super) file: File,
    pub(super) path: Arc<PathBuf>,
    pub(super) shared: Arc<End>,
    pub(super) buf: Vec<u8>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

impl LogReader {
    fn damaged(&self, offset: u64, why: &str) -> Error {
        Error::LogDamaged {
            path: self.path.to_path_buf(),
            offset,
            detail: why.to_string(),
        }
    }
}

impl Source for LogReader {
    fn name(&self) -> &str {
        "log"
    }

    fn read(&mut self, from: u64, max: usize, wait: Duration, out: &mut Vec<Record>) -> Result<()> {
        let end = {
            let guard = self.shared.end.lock().unwrap_or_else(|e| e.into_inner());
            if *guard > from || wait.is_zero() {
                *guard
            } else {
                let (g, _) = self
                    .shared
                    .cv
                    .wait_timeout_while(guard, wait, |e| *e <= from)
                    .unwrap_or_else(|e| e.into_inner());
                *g
            }
        };
        if end <= from {
            return Ok(());
        }
        const CHUNK: u64 = 4 << 20;
        let mut pos = from;
        while out.len() < max && pos < end {
            let want = (end - pos).min(CHUNK) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            let mut at = 0usize;
            while out.len() < max && at < want {
                match decode_record(&self.buf[at..], pos + at as u64) {
                    Decoded::Record(rec, n) => {
                        at += n;
                        out.push(rec);
                    }
                    Decoded::Incomplete { need } => {
                        if pos + (at + need) as u64 > end {
                            return Err(
                                self.damaged(pos + at as u64, "a record runs past the durable end")
                            );
                        }
                        break;
                    }
                    Decoded::Bad(why) => return Err(self.damaged(pos + at as u64, why)),
                }
            }
            if at == 0 && out.len() < max {
                // A record larger than the chunk: read exactly it.
                let mut one = Vec::new();
                match read_record_at(&self.file, pos, end, &mut one)? {
                    Decoded::Record(rec, n) => {
                        out.push(rec);
                        at = n;
                    }
                    Decoded::Incomplete { .. } => {
                        return Err(self.damaged(pos, "a record runs past the durable end"));
                    }
                    Decoded::Bad(why) => return Err(self.damaged(pos, why)),
                }
            }
            pos += at as u64;
        }
        Ok(())
    }

    fn end(&self) -> u64 {
        *self.shared.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self) -> u64 {
        FIRST_OFFSET
    }
}
