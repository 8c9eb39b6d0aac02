//! The reader: records by offset, across segments, up to the durable end.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use super::Source;
use super::record::{Decoded, Record, decode_record, read_record_at};
use super::segment::{SEGMENT_HEADER, Segments};
use crate::error::{Error, Result};

/// Reads the log by offset, up to the durable end.
pub struct LogReader {
    shared: Arc<Segments>,
    /// The segment file open now: its base, the segment list's generation when it was opened
    /// (a rewrite or a retirement since makes it reopen) and the file.
    open: Option<(u64, u64, File)>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

/// The segment holding an offset: its base and the end of what may be read in it.
struct Span {
    base: u64,
    end: u64,
    generation: u64,
}

impl LogReader {
    pub(super) fn new(shared: Arc<Segments>) -> LogReader {
        LogReader {
            shared,
            open: None,
            buf: Vec::new(),
        }
    }

    fn damaged(&self, base: u64, offset: u64, why: &str) -> Error {
        Error::LogDamaged {
            path: self.shared.path(base),
            offset,
            detail: why.to_string(),
        }
    }

    /// The segment holding `offset`, read no further than `end` (the durable end).
    fn span(&self, offset: u64, end: u64) -> Result<Span> {
        let list = self.shared.list();
        let Some(i) = list.find(offset) else {
            return Err(Error::Log(format!(
                "offset {offset} is before the first segment of {} (offset {}): the segments \
                 before it were retired",
                self.shared.dir.display(),
                list.bases[0]
            )));
        };
        let seg_end = list.bases.get(i + 1).copied().unwrap_or(end).min(end);
        Ok(Span {
            base: list.bases[i],
            end: seg_end,
            generation: list.generation,
        })
    }

    fn file(&mut self, span: &Span) -> Result<&File> {
        let reopen =
            !matches!(&self.open, Some((b, g, _)) if *b == span.base && *g == span.generation);
        if reopen {
            let path = self.shared.path(span.base);
            let file = File::open(&path).map_err(|source| Error::File { path, source })?;
            self.open = Some((span.base, span.generation, file));
        }
        Ok(&self.open.as_ref().expect("opened above").2)
    }

    /// Reads records of one segment from `from` to `span.end` into `out`; returns the
    /// offset it stopped at.
    fn read_segment(
        &mut self,
        span: &Span,
        from: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<u64> {
        const CHUNK: u64 = 4 << 20;
        let mut buf = std::mem::take(&mut self.buf);
        let file = self.file(span)?;
        let at_file = |offset: u64| offset - span.base + SEGMENT_HEADER;
        let mut pos = from;
        let mut failure = None;
        'outer: while out.len() < max && pos < span.end {
            let want = (span.end - pos).min(CHUNK) as usize;
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, at_file(pos))?;
            let mut at = 0usize;
            while out.len() < max && at < want {
                match decode_record(&buf[at..], pos + at as u64) {
                    Decoded::Record(rec, n) => {
                        at += n;
                        out.push(rec);
                    }
                    Decoded::Incomplete { need } => {
                        if pos + (at + need) as u64 > span.end {
                            failure = Some((pos + at as u64, "a record runs past the durable end"));
                            break 'outer;
                        }
                        break;
                    }
                    Decoded::Bad(why) => {
                        failure = Some((pos + at as u64, why));
                        break 'outer;
                    }
                }
            }
            if at == 0 && out.len() < max {
                // A record larger than the chunk: read exactly it.
                let mut one = Vec::new();
                let len = at_file(span.end);
                match read_record_at(file, at_file(pos), pos, len, &mut one)? {
                    Decoded::Record(rec, n) => {
                        out.push(rec);
                        at = n;
                    }
                    Decoded::Incomplete { .. } => {
                        failure = Some((pos, "a record runs past the durable end"));
                        break;
                    }
                    Decoded::Bad(why) => {
                        failure = Some((pos, why));
                        break;
                    }
                }
            }
            pos += at as u64;
        }
        self.buf = buf;
        match failure {
            Some((offset, why)) => Err(self.damaged(span.base, offset, why)),
            None => Ok(pos),
        }
    }
}

impl Source for LogReader {
    fn name(&self) -> &str {
        super::SOURCE
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
        let mut pos = from;
        while pos < end && out.len() < max {
            let span = self.span(pos, end)?;
            pos = self.read_segment(&span, pos, max, out)?;
        }
        Ok(())
    }

    fn end(&self) -> u64 {
        self.shared.end()
    }

    fn start(&self) -> u64 {
        self.shared.list().bases[0]
    }
}
