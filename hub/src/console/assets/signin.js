// The sign-in page: a service connection string is posted as JSON; the hub answers with the
// session cookie. A refused link comes back as the URL fragment.
'use strict';
(function () {
  const form = document.getElementById('signin-form');
  const input = document.getElementById('connection-string');
  const error = document.getElementById('signin-error');
  function show(text) {
    error.textContent = text;
    error.hidden = !text;
    input.setAttribute('aria-invalid', text ? 'true' : 'false');
  }
  if (location.hash.length > 1) {
    show(decodeURIComponent(location.hash.slice(1)));
    history.replaceState(null, '', location.pathname);
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!input.value.trim()) {
      show('connectionString: enter a service connection string');
      input.focus();
      return;
    }
    const response = await fetch('/console/signin', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ connectionString: input.value }),
      credentials: 'same-origin',
    });
    if (response.ok) {
      location.assign('/console/');
      return;
    }
    const body = await response.json().catch(() => ({}));
    show(String(body.Message || response.statusText).replace(/^ErrorCode:[A-Za-z]+;/, ''));
    input.focus();
  });
})();
