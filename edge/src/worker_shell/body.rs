//! The rewritten page body. Measured under workerd (`cargo xtask bench edge`), what a page
//! costs beyond lol_html's own work is the number of times a chunk crosses between workerd's
//! streams and the Worker, not the bytes: a JS-backed `ReadableStream` (a Rust `Stream` turned
//! into one, or a `TransformStream`) as the response body cost 60–90 µs of CPU per chunk, and
//! the upstream's body arrives in 4 KB chunks, so a 100 KB page paid 2 ms for its 27 chunks.
//! So the rest of the body after the first chunk is read with workerd's `readAtLeast` in chunks
//! of at least [`MIN_CHUNK`] bytes, rewritten, and written into an `IdentityTransformStream`,
//! whose readable side is a native stream that workerd sends without entering the Worker again.
//!
//! The first chunk is read as it comes (it names the page's item, before the response headers
//! are made, and is sent at once). At most [`MAX_CHUNK`] bytes are held at a time: each write
//! is awaited before the next chunk is taken, so a slow visitor slows the upstream read rather
//! than the page piling up in memory.

use futures_channel::oneshot;
use futures_util::future::join;
use worker::js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{
    ReadableStream, ReadableStreamDefaultReader, TransformStream, WritableStreamDefaultWriter,
};
use worker::{Error, Result, console_error};

use crate::rewrite::{PageRewriter, Report};

/// The least a read of the rest of the body waits for (unless the body ends first).
pub const MIN_CHUNK: u32 = 16 * 1024;
/// The most one read takes.
pub const MAX_CHUNK: u32 = 32 * 1024;

fn js_error(e: JsValue) -> Error {
    Error::JsError(
        e.as_string()
            .unwrap_or_else(|| "stream operation failed".into()),
    )
}

fn get(target: &JsValue, name: &str) -> Result<JsValue> {
    Reflect::get(target, &JsValue::from_str(name)).map_err(js_error)
}

/// `{done, value}` of a stream read: the bytes (none at the end) and whether it was the end.
async fn settle(read: Promise) -> Result<(Option<Vec<u8>>, bool)> {
    let result = JsFuture::from(read).await.map_err(js_error)?;
    let done = get(&result, "done")?.as_bool() == Some(true);
    let value = get(&result, "value")?;
    let bytes = match value.dyn_ref::<Uint8Array>() {
        Some(bytes) if bytes.length() > 0 => Some(bytes.to_vec()),
        Some(_) => None,
        None if done => None,
        None => return Err(Error::JsError("a body chunk that is not bytes".into())),
    };
    Ok((bytes, done))
}

/// A default reader of `body`, released on drop so the body can be read again afterwards.
pub(super) struct Reader(ReadableStreamDefaultReader);

impl Reader {
    pub(super) fn new(body: &ReadableStream) -> Result<Self> {
        ReadableStreamDefaultReader::new(body)
            .map(Reader)
            .map_err(js_error)
    }

    /// The next chunk as it comes; `None` at the end of the body.
    pub(super) async fn next(&self) -> Result<Option<Vec<u8>>> {
        loop {
            match settle(self.0.read()).await? {
                (Some(bytes), _) => return Ok(Some(bytes)),
                (None, true) => return Ok(None),
                (None, false) => continue,
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.release_lock();
    }
}

/// Reads the rest of the body in large chunks: workerd's `readAtLeast` on a byte stream, or
/// the default reader's chunks on a body that is not one.
enum Source {
    AtLeast {
        reader: JsValue,
        read_at_least: Function,
    },
    AsItComes(Reader),
}

impl Source {
    fn new(body: &ReadableStream) -> Result<Self> {
        let options = Object::new();
        let byob = Reflect::set(&options, &"mode".into(), &"byob".into())
            .ok()
            .and_then(|_| {
                let get_reader: Function = get(body, "getReader").ok()?.dyn_into().ok()?;
                get_reader.call1(body, &options).ok()
            });
        if let Some(reader) = byob {
            if let Ok(read_at_least) = get(&reader, "readAtLeast").and_then(|f| {
                f.dyn_into::<Function>()
                    .map_err(|_| Error::JsError("no readAtLeast".into()))
            }) {
                return Ok(Source::AtLeast {
                    reader,
                    read_at_least,
                });
            }
            if let Ok(release) = get(&reader, "releaseLock").and_then(|f| {
                f.dyn_into::<Function>()
                    .map_err(|_| Error::JsError("no releaseLock".into()))
            }) {
                let _ = release.call0(&reader);
            }
        }
        Reader::new(body).map(Source::AsItComes)
    }

    async fn next(&self) -> Result<Option<Vec<u8>>> {
        match self {
            Source::AtLeast {
                reader,
                read_at_least,
            } => loop {
                let view = Uint8Array::new_with_length(MAX_CHUNK);
                let read: Promise = read_at_least
                    .call2(reader, &JsValue::from(MIN_CHUNK), &view)
                    .map_err(js_error)?
                    .dyn_into()
                    .map_err(|_| Error::JsError("readAtLeast gave no promise".into()))?;
                match settle(read).await? {
                    (Some(bytes), _) => return Ok(Some(bytes)),
                    (None, true) => return Ok(None),
                    (None, false) => continue,
                }
            },
            Source::AsItComes(reader) => reader.next().await,
        }
    }

    fn cancel(&self) {
        let reader = match self {
            Source::AtLeast { reader, .. } => reader.clone(),
            Source::AsItComes(r) => r.0.clone().into(),
        };
        if let Ok(cancel) = get(&reader, "cancel").and_then(|f| {
            f.dyn_into::<Function>()
                .map_err(|_| Error::JsError("no cancel".into()))
        }) {
            let _ = cancel.call0(&reader);
        }
    }
}

/// The stream the visitor reads and the writer that fills it.
pub(super) struct Output {
    pub readable: ReadableStream,
    writer: WritableStreamDefaultWriter,
}

impl Output {
    /// An `IdentityTransformStream` (workerd's native byte pipe).
    pub(super) fn new() -> Result<Self> {
        let ctor: Function = get(&worker::js_sys::global(), "IdentityTransformStream")?
            .dyn_into()
            .map_err(|_| Error::JsError("no IdentityTransformStream".into()))?;
        let stream: TransformStream = Reflect::construct(&ctor, &Array::new())
            .map_err(js_error)?
            .unchecked_into();
        let writer = stream.writable().get_writer().map_err(js_error)?;
        Ok(Output {
            readable: stream.readable(),
            writer,
        })
    }

    fn write(&self, bytes: &[u8]) -> Option<JsFuture> {
        (!bytes.is_empty())
            .then(|| JsFuture::from(self.writer.write_with_chunk(&Uint8Array::from(bytes))))
    }
}

/// Fills `out`: `first` (the first chunk, already rewritten), then the rest of `body` through
/// the rewriter; the rewriter's report goes to `report_tx` once the page has been written.
/// Runs in `waitUntil` while workerd sends `out.readable`.
pub(super) async fn rewrite(
    body: ReadableStream,
    out: Output,
    first: Vec<u8>,
    mut rewriter: PageRewriter,
    report_tx: oneshot::Sender<Report>,
) {
    let source = match Source::new(&body) {
        Ok(source) => source,
        Err(e) => {
            console_error!("attune: upstream body: {e}");
            let _ = out.writer.abort();
            return;
        }
    };
    let mut writing = out.write(&first);
    loop {
        // The next chunk is read while the last one is being written.
        let read = source.next();
        let (next, written) = match writing.take() {
            Some(w) => {
                let (next, written) = join(read, w).await;
                (next, written.is_ok())
            }
            None => (read.await, true),
        };
        if !written {
            // The visitor went away: stop reading the upstream.
            source.cancel();
            return;
        }
        match next {
            Ok(Some(chunk)) => writing = out.write(&rewriter.write(&chunk)),
            Ok(None) => break,
            Err(e) => {
                // The page ends where the upstream's body failed, as a complete response.
                console_error!("attune: upstream body: {e}");
                break;
            }
        }
    }
    let (rest, report) = rewriter.end();
    if let Some(w) = out.write(&rest)
        && w.await.is_err()
    {
        return;
    }
    let _ = JsFuture::from(out.writer.close()).await;
    let _ = report_tx.send(report);
}
