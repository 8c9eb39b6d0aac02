//! The page body, which never enters the wasm. The rewritten page's first chunk is made before
//! the response headers: producing it runs the handlers over the upstream's first chunk, whose
//! `<meta name="attune:item">` joins the session cookie those headers carry. The rewritten body
//! is teed for it, and the visitor reads the other branch, a stream of workerd's own that
//! workerd sends without calling into the Worker (each chunk that crosses into JS or wasm costs
//! more CPU than rewriting it: measured with `cargo xtask bench edge`). workerd does not
//! `pipeTo` from one `TransformStream` into another, so the first chunk cannot be written ahead
//! of the rest into a new stream.

use worker::js_sys::{Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{ReadableStream, ReadableStreamDefaultReader};
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

/// Makes `body`'s first chunk and answers the stream the visitor reads, which still starts
/// with it. `body` is teed: one branch is read for that chunk and cancelled; the other, which
/// holds it, goes to the visitor. Without the tee's second branch (or if reading fails) the
/// body goes as it is.
pub(super) async fn first_chunk_read(body: &ReadableStream) -> ReadableStream {
    let branches = body.tee();
    let (probe, page) = match (
        branches.get(0).dyn_into::<ReadableStream>(),
        branches.get(1).dyn_into::<ReadableStream>(),
    ) {
        (Ok(probe), Ok(page)) => (probe, page),
        _ => return body.clone(),
    };
    match Reader::new(&probe) {
        Ok(reader) => {
            if let Err(e) = reader.next().await {
                console_error!("attune: page body: {e}");
            }
        }
        Err(e) => console_error!("attune: page body: {e}"),
    }
    let _ = probe.cancel();
    page
}
