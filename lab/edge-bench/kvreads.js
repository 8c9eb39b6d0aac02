// What Attune's KV reads cost under `wrangler dev`: the two reads Attune makes for a page (the
// manifest and the visitor's profile), then the page passed through untouched. Locally KV is a
// simulator inside the same workerd, so its CPU counts there; on Cloudflare it does not run in
// the isolate.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [manifest, profile] = await Promise.all([
      env.ATTUNE_KV.get("m", "arrayBuffer"),
      env.ATTUNE_KV.get(env.PROFILE_KEY, "arrayBuffer"),
    ]);
    if (manifest === null || profile === null) return new Response("KV not seeded", { status: 500 });
    return fetch(new Request(env.UPSTREAM + url.pathname + url.search, request));
  },
};
