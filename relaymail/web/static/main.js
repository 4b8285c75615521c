// Starts the page the server named (the other scripts put their pages in PAGES).
"use strict";

guarded(async () => {
  document.cookie = "lang=" + C.lang + "; Path=/; SameSite=Strict";
  if (!OPEN_PAGES.includes(C.page)) csrf = (await api("GET", "/api/session")).csrf;
  document.getElementById("logout")?.addEventListener("click", guarded(async () => {
    await api("POST", "/logout"); location.href = "/login";
  }));
  await PAGES[C.page]();
})();
