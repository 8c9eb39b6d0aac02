// The bench's baseline: fetches the page from the upstream and returns it untouched.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return fetch(new Request(env.UPSTREAM + url.pathname + url.search, request));
  },
};
