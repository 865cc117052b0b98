import { api, safeNext } from "./api.js";
import { $, el, replace } from "./dom.js";

const next = safeNext(new URLSearchParams(location.search).get("next") ?? "/");
const form = $("#sign-in");
const message = $("#message");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("#token");
  const token = field.value.trim();
  if (!token) return;
  replace(message, "Signing in…");
  try {
    await api("/edgemon/api/v1/session", { method: "POST", body: { token }, redirect: false });
    field.value = "";
    location.replace(next);
  } catch (error) {
    replace(message, el("span", { class: "note note-error" }, error.message));
    field.select();
  }
});

// Already signed in (e.g. arriving from another site, which SameSite=Strict cookies ignore)?
const ready = () => { document.body.dataset.ready = "1"; $("#token").focus(); };
api("/edgemon/api/v1/session", { redirect: false }).then((me) => (me.signed_in ? location.replace(next) : ready()), ready);
