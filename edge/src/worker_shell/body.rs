//! The page body, which never enters the wasm. The upstream's first chunk is read before the
//! response headers are made (its `<meta name="attune:item">` joins the session cookie those
//! headers carry: `html::probe`), so the rewriter's input is that chunk and then the
//! rest of the upstream body: an `IdentityTransformStream` the chunk is written into and the
//! rest piped into with `pipeTo`. Both streams are workerd's own, so workerd moves the bytes
//! without calling into the Worker (each chunk that crosses into JS or wasm costs more CPU than
//! rewriting it: measured with `cargo xtask bench edge`). workerd does not pipe one
//! `TransformStream` into another, which is why the stitching is on the input side.

use worker::js_sys::{Array, Function, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{
    ReadableStream, ReadableStreamDefaultReader, StreamPipeOptions, TransformStream, WritableStream,
};
use worker::{Error, Result, console_error};

fn js_error(e: JsValue) -> Error {
    let message = match e.dyn_ref::<worker::js_sys::Error>() {
        Some(e) => Some(String::from(e.message())),
        None => e.as_string(),
    };
    Error::JsError(message.unwrap_or_else(|| "stream operation failed".into()))
}

fn get(target: &JsValue, name: &str) -> Result<JsValue> {
    Reflect::get(target, &JsValue::from_str(name)).map_err(js_error)
}

/// A default reader of a body, released on drop so the body can be piped afterwards.
pub(super) struct Reader(ReadableStreamDefaultReader);

impl Reader {
    pub(super) fn new(body: &ReadableStream) -> Result<Self> {
        ReadableStreamDefaultReader::new(body)
            .map(Reader)
            .map_err(js_error)
    }

    /// The next non-empty chunk as workerd gives it (not copied into the wasm); `None` at the
    /// end of the body.
    pub(super) async fn next(&self) -> Result<Option<Uint8Array>> {
        loop {
            let result = JsFuture::from(self.0.read()).await.map_err(js_error)?;
            let done = get(&result, "done")?.as_bool() == Some(true);
            match get(&result, "value")?.dyn_into::<Uint8Array>() {
                Ok(bytes) if bytes.length() > 0 => return Ok(Some(bytes)),
                _ if done => return Ok(None),
                Ok(_) => continue,
                Err(_) => return Err(Error::JsError("a body chunk that is not bytes".into())),
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.release_lock();
    }
}

/// The stream the visitor reads and its writable side.
pub(super) struct Output {
    pub readable: ReadableStream,
    writable: WritableStream,
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
        Ok(Output {
            readable: stream.readable(),
            writable: stream.writable(),
        })
    }

    /// Ends the stream with nothing written (a page without a body).
    pub(super) fn close(self) {
        let _ = self.writable.close();
    }
}

/// Fills `out`, the page's rewriter's input: `first` (the upstream's first chunk, already
/// read), then the rest of `body` (whose reader is `reader`), piped by workerd. Runs in
/// `waitUntil` while workerd sends the rewritten page.
pub(super) async fn forward(
    first: Option<Uint8Array>,
    reader: Option<Reader>,
    body: ReadableStream,
    out: Output,
) {
    let written = match (&first, out.writable.get_writer()) {
        (None, _) => true,
        (Some(first), Ok(writer)) => {
            let written = JsFuture::from(writer.write_with_chunk(first)).await;
            writer.release_lock();
            written.is_ok()
        }
        (Some(_), Err(_)) => false,
    };
    drop(reader);
    if !written {
        // The visitor went away: stop reading the upstream.
        let _ = JsFuture::from(body.cancel()).await;
        return;
    }
    // pipeTo closes `out` at the end of the body and cancels the body if the visitor goes away.
    // Where the body fails, the page ends there, as a complete response.
    let options = StreamPipeOptions::new();
    options.set_prevent_abort(true);
    if let Err(e) = JsFuture::from(body.pipe_to_with_options(&out.writable, &options)).await {
        console_error!("attune: upstream body: {}", js_error(e));
        let _ = JsFuture::from(out.writable.close()).await;
    }
}
