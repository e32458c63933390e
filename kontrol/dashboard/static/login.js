// Load a kite.key file into the login form's text area (the file never leaves the browser otherwise).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const file = document.getElementById("kite_key_file");
  const text = document.getElementById("kite_key");
  if (!file || !text) return;
  file.addEventListener("change", () => {
    const chosen = file.files && file.files[0];
    if (chosen) chosen.text().then((content) => { text.value = content.trim(); });
  });
});
