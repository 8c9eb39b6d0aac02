// The bench's comparison: the slot fill Attune does, with workerd's built-in HTMLRewriter
// (lol_html compiled into workerd), from picks made beforehand. `env.PICKS` maps a page path to
// its slots: `{ "<slot>": { "items": [catalog item, ...] } }` for a recommendation slot,
// `{ "<slot>": { "variant": "<name>" } }` for a variant slot. The bench checks that this worker
// and Attune answer the same bytes for the same picks, so the markup rules below follow
// edge/src/rewrite.rs and edge/src/escape.rs (for a page served as UTF-8).

const FIELDS = ["id", "title", "url", "image", "price", "category"];
const URL_ATTRS = ["href", "src", "action", "formaction", "poster", "data", "cite", "background"];

function escapeHtml(s) {
  return s.replace(/[&<>]/g, (c) => (c === "&" ? "&amp;" : c === "<" ? "&lt;" : "&gt;"));
}

function allowedAttr(name) {
  const lower = name.toLowerCase();
  return (
    /^[A-Za-z0-9_-]{1,32}$/.test(name) &&
    !lower.startsWith("on") &&
    lower !== "style" &&
    lower !== "srcdoc" &&
    lower !== "srcset"
  );
}

function safeUrl(url) {
  if (!url || url.length > 2048 || /[\x00-\x20\x7f\\]/.test(url)) return null;
  const m = /^([^:/?#]*):/.exec(url);
  if (!m) return url;
  const scheme = m[1].toLowerCase();
  return scheme === "http" || scheme === "https" ? url : null;
}

function fill(slots) {
  let slot = null;
  let seen = 0;
  let item = null;
  return new HTMLRewriter()
    .on("[data-attune-slot]", {
      element(el) {
        if (slot !== null) return;
        slot = slots[el.getAttribute("data-attune-slot")] || {};
        seen = 0;
        item = null;
        el.onEndTag(() => {
          slot = null;
          item = null;
        });
      },
    })
    .on("[data-attune-item]", {
      element(el) {
        if (slot === null || !slot.items) return;
        item = slot.items[seen++] || null;
        if (item) {
          el.setAttribute("data-attune-item", escapeHtml(item.id));
          el.onEndTag(() => {
            item = null;
          });
        }
      },
    })
    .on("[data-attune-field]", {
      element(el) {
        const field = (el.getAttribute("data-attune-field") || "").trim();
        if (item && FIELDS.includes(field)) el.setInnerContent(escapeHtml(item[field]), { html: true });
      },
    })
    .on("[data-attune-attr]", {
      element(el) {
        if (!item) return;
        for (const pair of el.getAttribute("data-attune-attr").split(/[ ,\t\n]/)) {
          const at = pair.indexOf(":");
          if (at < 0) continue;
          const attr = pair.slice(0, at);
          const field = pair.slice(at + 1);
          if (!allowedAttr(attr) || !FIELDS.includes(field)) continue;
          let value = item[field];
          if (URL_ATTRS.includes(attr.toLowerCase()) || field === "url" || field === "image") {
            value = safeUrl(value);
            if (value === null) continue;
          }
          el.setAttribute(attr, escapeHtml(value));
        }
      },
    })
    .on("[data-attune-variant]", {
      element(el) {
        if (slot === null || slot.variant === undefined) return;
        if ((el.getAttribute("data-attune-variant") || "").trim() === slot.variant) {
          el.removeAttribute("hidden");
        } else {
          el.remove();
        }
      },
    });
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const upstream = await fetch(new Request(env.UPSTREAM + url.pathname + url.search, request));
    const slots = env.PICKS[url.pathname];
    const type = upstream.headers.get("content-type") || "";
    if (!slots || upstream.status !== 200 || !type.startsWith("text/html")) return upstream;
    return fill(slots).transform(upstream);
  },
};
