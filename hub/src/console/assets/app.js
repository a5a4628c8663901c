// The console's front end: hash routes, one render function per page, data from the hub's own
// REST API (/console/api/..., answered as the session's policy) and live events from
// /console/events (server-sent events). No framework, no inline script or style (strict CSP).
'use strict';

const API_VERSION = '2021-04-12';
const view = document.getElementById('view');
let session = null;
// What the current page must undo when the route changes (timers, event streams).
let cleanups = [];

// ---- helpers -------------------------------------------------------------------------------

// Builds an element: h('a', {href: '#'}, 'text', child...). `on*` attributes become listeners.
function h(tag, attrs, ...children) {
  const svg = ['svg', 'polyline', 'line', 'text'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function can(permission) {
  return session && session.permissions.includes(permission);
}

// The hub's error text without IoT Hub's `ErrorCode:X;` prefix.
function errorText(body, status) {
  const message = body && (body.Message || body.message);
  if (!message) return 'HTTP ' + status;
  return String(message).replace(/^ErrorCode:([A-Za-z]+);/, '$1: ');
}

// Calls the REST API; resolves to {ok, status, body, etag}.
async function api(method, path, body, headers) {
  const url = '/console/api' + path + (path.includes('?') ? '&' : '?') + 'api-version=' + API_VERSION;
  const init = { method, credentials: 'same-origin', headers: Object.assign({}, headers) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['content-type'] = 'application/json';
  }
  if (method !== 'GET') init.headers['x-console-csrf'] = session.csrfToken;
  const response = await fetch(url, init);
  if (response.status === 401 && !session) location.assign('/console/');
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = text; }
  return { ok: response.ok, status: response.status, body: parsed, etag: response.headers.get('etag'),
    more: Boolean(response.headers.get('x-ms-continuation')) };
}

function enc(id) {
  return encodeURIComponent(id);
}

// `/twins/d` or `/twins/d/modules/m`.
function twinPath(device, module) {
  return '/twins/' + enc(device) + (module ? '/modules/' + enc(module) : '');
}

function clientId(device, module) {
  return module ? device + '/' + module : device;
}

function label(device, module) {
  return module ? device + ' / ' + module : device;
}

// Replaces the children of `parent` only if what they show changed, and then gives the keyboard
// focus back to the same link or button (same tag and accessible name) if the user was on one, so
// that polling never takes the focus away.
function replaceIfChanged(parent, shown, build) {
  const key = JSON.stringify(shown);
  if (parent.dataset.shown === key) return;
  parent.dataset.shown = key;
  const focused = parent.contains(document.activeElement) ? focusKey(document.activeElement) : null;
  parent.replaceChildren(...build());
  if (focused) {
    const again = [...parent.querySelectorAll(focused.tag)].find((el) => focusKey(el).name === focused.name);
    if (again) again.focus();
  }
}

function focusKey(element) {
  return { tag: element.tagName.toLowerCase(), name: element.getAttribute('aria-label') || element.textContent };
}

function every(ms, fn) {
  fn();
  const timer = setInterval(fn, ms);
  cleanups.push(() => clearInterval(timer));
}

// Opens the live stream; `handlers` maps event names to functions of the parsed data.
function listen(query, handlers) {
  const source = new EventSource('/console/events' + (query ? '?' + query : ''));
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
  }
  cleanups.push(() => source.close());
  return source;
}

// The connected client ids of the last `connections` event (null until one came): the page's
// cells follow it rather than the slower polling.
let live = null;

// Live connection state: cells with data-client-id (one identity) and data-device-id (a device
// and its modules) follow the `connections` events.
function followConnections() {
  if (!can('RegistryRead')) return;
  listen('', {
    connections(ids) {
      live = new Set(ids);
      applyLive();
    },
  });
}

// Brings every connection cell of the page to the last `connections` event, if one came.
function applyLive() {
  if (!live) return;
  for (const cell of view.querySelectorAll('[data-client-id]')) {
    setState(cell, live.has(cell.dataset.clientId) ? 'Connected' : 'Disconnected');
  }
  for (const cell of view.querySelectorAll('[data-device-id]')) {
    const device = cell.dataset.deviceId;
    const modules = [...live].filter((id) => id.startsWith(device + '/')).length;
    setSummary(cell, connectionSummary(live.has(device), modules, Number(cell.dataset.modules)));
  }
}

function setState(cell, state) {
  setSummary(cell, { text: state, state });
}

function setSummary(cell, summary) {
  if (cell.textContent === summary.text && cell.className === 'state-' + summary.state) return;
  cell.textContent = summary.text;
  cell.className = 'state-' + summary.state;
  cell.dataset.changed = new Date().toISOString();
}

// What a device's connection cell says. A device with module identities (an IoT Edge device
// always has $edgeAgent and $edgeHub) talks to IoT Hub through them, and its own identity may
// never connect: IoT Hub shows such a device "Disconnected" while its modules are connected
// (Azure/iot-edge-v1#471, Azure/iotedge#809). So say both, and colour the cell by whether
// anything of the device is connected.
function connectionSummary(deviceConnected, modulesConnected, modules) {
  const state = deviceConnected || modulesConnected > 0 ? 'Connected' : 'Disconnected';
  if (!modules) return { text: deviceConnected ? 'Connected' : 'Disconnected', state };
  return { text: 'device: ' + (deviceConnected ? 'connected' : 'disconnected') + '\u00a0· ' + modulesConnected
    + ' of ' + modules + ' modules connected', state };
}

// The connection cell of a device with `modules` module identities, `modulesConnected` of them
// connected as the last poll saw it.
function summaryCell(device, deviceState, modulesConnected, modules) {
  const summary = connectionSummary(deviceState === 'Connected', modulesConnected, modules);
  return h('td', { 'data-device-id': device, 'data-modules': modules, class: 'state-' + summary.state }, summary.text);
}

function stateCell(device, module, state) {
  return h('td', { 'data-client-id': clientId(device, module), class: 'state-' + state }, state);
}

function page(title, ...children) {
  document.title = title + ' · edgetwin hub console';
  view.replaceChildren(h('h1', {}, title), ...children);
}

// A table of `headings` whose rows the caller puts in `body` (a <tbody>, filled now or later).
function table(caption, headings, body) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('caption', { class: 'muted' }, caption),
      h('thead', {}, h('tr', {}, headings.map((t) => h('th', { scope: 'col' }, t)))),
      body));
}

// The row header naming `id`: an id longer than a column should be may break anywhere (class
// long-id), shorter ones keep whole.
function idCell(id, content) {
  return h('th', { scope: 'row', class: id.length > 16 ? 'long-id' : null }, content);
}

function alertBox(id) {
  return h('p', { id, class: 'error', role: 'alert', hidden: true });
}

function showError(box, text) {
  box.textContent = text || '';
  box.hidden = !text;
}

// ---- pages ---------------------------------------------------------------------------------

// Rows of a grouped query as a map from `deviceId` to the count `field`.
function countsByDevice(reply, field) {
  return new Map(reply.ok ? reply.body.map((row) => [row.deviceId, row[field]]) : []);
}

async function devicesPage() {
  const body = h('tbody', {});
  const error = alertBox('devices-error');
  const more = h('p', { class: 'muted', hidden: true }, 'Showing the first page of devices (100) only.');
  page('Devices', error, more,
    table('Every device of the hub; connection state is live.',
      ['Device', 'Connection', 'IoT Edge', 'Deployments', 'Status'], body));
  followConnections();
  every(3000, async () => {
    const [reply, modules, connected] = await Promise.all([
      api('POST', '/devices/query', { query: 'SELECT * FROM devices' }),
      api('POST', '/devices/query', { query: 'SELECT deviceId, COUNT() AS n FROM devices.modules GROUP BY deviceId' }),
      api('POST', '/devices/query', { query: "SELECT deviceId, COUNT() AS n FROM devices.modules WHERE connectionState = 'Connected' GROUP BY deviceId" }),
    ]);
    const refused = [reply, modules, connected].find((r) => !r.ok);
    if (refused) return showError(error, errorText(refused.body, refused.status));
    showError(error, '');
    more.hidden = !reply.more;
    const totals = countsByDevice(modules, 'n');
    const up = countsByDevice(connected, 'n');
    const shown = reply.body.map((twin) => [twin.deviceId, twin.connectionState || 'Disconnected',
      up.get(twin.deviceId) || 0, totals.get(twin.deviceId) || 0,
      Boolean(twin.capabilities && twin.capabilities.iotEdge),
      Object.entries(twin.configurations || {}).map(([id, s]) => id + ': ' + s.status).join(', '),
      twin.status || '']);
    replaceIfChanged(body, shown, () => (shown.length ? shown.map(([id, state, moduleUp, moduleCount, edge, configurations, status]) => h('tr', {},
      idCell(id, h('a', { href: '#/device/' + enc(id) }, id)),
      summaryCell(id, state, moduleUp, moduleCount),
      h('td', {}, edge ? 'yes' : 'no'),
      h('td', {}, configurations || '—'),
      h('td', {}, status))) : [h('tr', {}, h('td', { colspan: 5 }, 'No devices yet.'))]));
    applyLive();
  });
}

function identityLinks(device, module) {
  const base = enc(device) + (module ? '/' + enc(module) : '');
  return h('td', { class: 'links' },
    h('a', { href: '#/twin/' + base }, 'Twin'), ' · ',
    h('a', { href: '#/telemetry/' + base }, 'Telemetry'), ' · ',
    h('a', { href: '#/methods/' + base }, 'Methods'));
}

function dropButton(device, module, status) {
  return h('button', {
    type: 'button', class: 'secondary', disabled: !(can('RegistryWrite') && can('ServiceConnect')),
    'aria-label': 'Drop the connection of ' + label(device, module),
    async onclick() {
      const reply = await api('POST', '/edgetwin/faults/disconnect', { clientId: clientId(device, module) });
      status.textContent = reply.ok ? 'Dropped the connection of ' + label(device, module) + '.'
        : errorText(reply.body, reply.status);
    },
  }, 'Drop connection');
}

async function devicePage(device) {
  const status = h('p', { role: 'status' });
  const error = alertBox('device-error');
  const summary = h('tbody', {});
  const modules = h('tbody', {});
  page('Device ' + device, error, status,
    table('The device', ['Device', 'Connection', 'IoT Edge', 'Open', 'Fault'], summary),
    h('h2', {}, 'Modules'),
    table('Its modules; connection state is live.', ['Module', 'Connection', 'Open', 'Fault'], modules));
  followConnections();
  every(3000, async () => {
    const [d, m] = await Promise.all([
      api('GET', '/devices/' + enc(device)),
      api('GET', '/devices/' + enc(device) + '/modules'),
    ]);
    if (!d.ok) return showError(error, errorText(d.body, d.status));
    if (!m.ok) return showError(error, errorText(m.body, m.status));
    showError(error, '');
    const state = d.body.connectionState || 'Disconnected';
    const edge = Boolean(d.body.capabilities && d.body.capabilities.iotEdge);
    const shown = m.body.map((module) => [module.moduleId, module.connectionState || 'Disconnected']);
    const up = shown.filter(([, moduleState]) => moduleState === 'Connected').length;
    replaceIfChanged(summary, [state, edge, up, shown.length], () => [h('tr', {},
      idCell(device, device),
      summaryCell(device, state, up, shown.length),
      h('td', {}, edge ? 'yes' : 'no'),
      identityLinks(device, null),
      h('td', {}, dropButton(device, null, status)))]);
    replaceIfChanged(modules, shown, () => (shown.length ? shown.map(([id, moduleState]) => h('tr', {},
      idCell(id, id),
      stateCell(device, id, moduleState),
      identityLinks(device, id),
      h('td', {}, dropButton(device, id, status)))) : [h('tr', {}, h('td', { colspan: 4 }, 'No modules.'))]));
    applyLive();
  });
}

// Desired or reported properties without `$metadata` and `$version`.
function plain(properties) {
  const copy = Object.assign({}, properties || {});
  delete copy.$metadata;
  delete copy.$version;
  return copy;
}

// The JSON merge patch that turns `from` into `to` (null removes).
function mergePatch(from, to) {
  const patch = {};
  for (const key of Object.keys(from)) if (!(key in to)) patch[key] = null;
  for (const [key, value] of Object.entries(to)) {
    const old = from[key];
    const objects = [old, value].every((v) => v && typeof v === 'object' && !Array.isArray(v));
    if (objects) {
      const inner = mergePatch(old, value);
      if (Object.keys(inner).length) patch[key] = inner;
    } else if (JSON.stringify(old) !== JSON.stringify(value)) {
      patch[key] = value;
    }
  }
  return patch;
}

// Leaf paths that differ between two documents, as [kind, path, old, new].
function diff(from, to, prefix) {
  const out = [];
  const keys = new Set([...Object.keys(from || {}), ...Object.keys(to || {})]);
  for (const key of keys) {
    if (key === '$metadata') continue;
    const path = prefix ? prefix + '.' + key : key;
    const a = from ? from[key] : undefined;
    const b = to ? to[key] : undefined;
    const objects = [a, b].every((v) => v && typeof v === 'object' && !Array.isArray(v));
    if (objects) out.push(...diff(a, b, path));
    else if (a === undefined) out.push(['add', path, a, b]);
    else if (b === undefined) out.push(['remove', path, a, b]);
    else if (JSON.stringify(a) !== JSON.stringify(b)) out.push(['change', path, a, b]);
  }
  return out;
}

function jsonEditor(id, text, value) {
  return [h('label', { for: id }, text),
    h('textarea', { id, rows: 8, spellcheck: 'false', 'aria-describedby': 'twin-error' }, json(value))];
}

async function twinPage(device, module) {
  const path = twinPath(device, module);
  const error = alertBox('twin-error');
  const status = h('p', { role: 'status' });
  const version = h('p', {});
  const desired = h('pre', { id: 'twin-desired', tabindex: 0, 'aria-label': 'Desired properties' });
  const reported = h('pre', { id: 'twin-reported', tabindex: 0, 'aria-label': 'Reported properties' });
  const metadata = h('pre', { tabindex: 0, 'aria-label': 'Metadata' });
  const changes = h('ul', { id: 'twin-diff' }, h('li', { class: 'muted' }, 'No change seen yet.'));
  const editor = h('form', { novalidate: true });
  let current = null;
  page('Twin of ' + label(device, module),
    version,
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'desired-title' }, h('h2', { id: 'desired-title' }, 'Desired'), desired),
      h('section', { 'aria-labelledby': 'reported-title' }, h('h2', { id: 'reported-title' }, 'Reported'), reported)),
    h('details', {}, h('summary', {}, '$metadata (desired and reported)'), metadata),
    h('h2', {}, 'Last change'), changes,
    h('h2', {}, 'Edit desired properties and tags'), editor);

  function fillEditor(twin) {
    editor.replaceChildren(
      ...jsonEditor('edit-desired', 'Desired properties (JSON)', plain(twin.properties.desired)),
      ...jsonEditor('edit-tags', 'Tags (JSON)', twin.tags || {}),
      error, status,
      h('button', { type: 'submit', disabled: !can('ServiceConnect') }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => fillEditor(current) }, 'Reset'));
  }

  editor.addEventListener('submit', async (event) => {
    event.preventDefault();
    const fields = [['edit-desired', 'desired properties'], ['edit-tags', 'tags']];
    const values = {};
    for (const [id, what] of fields) {
      const area = document.getElementById(id);
      area.setAttribute('aria-invalid', 'false');
      try {
        values[id] = JSON.parse(area.value);
        if (!values[id] || typeof values[id] !== 'object' || Array.isArray(values[id])) throw new Error('must be a JSON object');
      } catch (e) {
        area.setAttribute('aria-invalid', 'true');
        area.focus();
        return showError(error, what + ': ' + e.message);
      }
    }
    const patch = {};
    const desiredPatch = mergePatch(plain(current.properties.desired), values['edit-desired']);
    const tagsPatch = mergePatch(current.tags || {}, values['edit-tags']);
    if (Object.keys(desiredPatch).length) patch.properties = { desired: desiredPatch };
    if (Object.keys(tagsPatch).length) patch.tags = tagsPatch;
    if (!Object.keys(patch).length) return showError(error, 'Nothing changed.');
    const reply = await api('PATCH', path, patch, { 'if-match': current.etag ? '"' + current.etag + '"' : '*' });
    if (!reply.ok) {
      document.getElementById('edit-desired').setAttribute('aria-invalid', 'true');
      return showError(error, errorText(reply.body, reply.status));
    }
    showError(error, '');
    status.textContent = 'Saved: desired $version ' + reply.body.properties.desired.$version + '.';
    show(reply.body);
    fillEditor(reply.body);
  });

  function show(twin) {
    if (current && JSON.stringify(current) === JSON.stringify(twin)) return;
    if (current) {
      const lines = diff({ properties: current.properties, tags: current.tags },
        { properties: twin.properties, tags: twin.tags }, '');
      if (lines.length) {
        changes.replaceChildren(...lines.map(([kind, p, a, b]) => h('li', { class: 'diff-' + kind },
          kind === 'add' ? '+ ' + p + ': ' + JSON.stringify(b)
            : kind === 'remove' ? '− ' + p + ' (was ' + JSON.stringify(a) + ')'
              : '~ ' + p + ': ' + JSON.stringify(a) + ' → ' + JSON.stringify(b))));
      }
    }
    current = twin;
    version.textContent = 'desired $version ' + twin.properties.desired.$version + ' · reported $version '
      + twin.properties.reported.$version + ' · etag ' + twin.etag + ' · ' + (twin.connectionState || '');
    desired.textContent = json(plain(twin.properties.desired));
    reported.textContent = json(plain(twin.properties.reported));
    metadata.textContent = json({ desired: twin.properties.desired.$metadata, reported: twin.properties.reported.$metadata });
  }

  every(2000, async () => {
    const reply = await api('GET', path);
    if (!reply.ok) return showError(error, errorText(reply.body, reply.status));
    const first = !current;
    show(reply.body);
    if (first) fillEditor(reply.body);
  });
}

// Numeric fields of a JSON body by dotted path (`load.1m`), or none.
function numbers(text) {
  const found = {};
  function walk(value, prefix) {
    if (typeof value === 'number' && isFinite(value)) found[prefix] = value;
    else if (value && typeof value === 'object' && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) walk(inner, prefix ? prefix + '.' + key : key);
    }
  }
  try { walk(JSON.parse(text), ''); } catch (_) { /* not JSON: nothing to chart */ }
  return found;
}

// The unit a field's name ends in (`memory.totalKiB`: KiB), or null.
const UNITS = [[/KiB$/, 'KiB'], [/MiB$/, 'MiB'], [/GiB$/, 'GiB'], [/Bytes$/i, 'bytes'], [/Percent$/i, '%'],
  [/(Secs|Seconds)$/i, 's'], [/Ms$/, 'ms']];

function unitOf(name) {
  const found = UNITS.find(([pattern]) => pattern.test(name));
  return found ? found[1] : null;
}

// Largest absolute value of a series (its magnitude).
function magnitude(points) {
  return Math.max(...points.map(Math.abs));
}

// The fields grouped so that each group can share one axis: fields whose names end in the same
// unit (`memory.usedPercent`, `disk.usedPercent`), else siblings of one object (`load.1m`,
// `load.5m`) whose magnitudes are within 10× of each other, else one field alone. Each group is
// {title, unit, names}.
function axisGroups(series) {
  const groups = new Map();
  for (const name of Object.keys(series)) {
    const unit = unitOf(name);
    const parent = name.includes('.') ? name.slice(0, name.lastIndexOf('.')) : null;
    const key = unit ? 'unit:' + unit : parent ? 'object:' + parent : 'field:' + name;
    if (!groups.has(key)) groups.set(key, { title: unit ? 'in ' + unit : parent || name, unit, names: [] });
    groups.get(key).names.push(name);
  }
  const out = [];
  for (const group of groups.values()) {
    const sizes = group.names.map((name) => magnitude(series[name])).filter((m) => m > 0);
    const spread = sizes.length ? Math.max(...sizes) / Math.min(...sizes) : 1;
    if (group.unit || spread <= 10) out.push(group);
    else out.push(...group.names.map((name) => ({ title: name, unit: null, names: [name] })));
  }
  return out;
}

// The smallest of 1, 2, 2.5, 5 × 10^k at or above `x` (for x > 0).
function niceCeil(x) {
  const power = Math.pow(10, Math.floor(Math.log10(x)));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((v) => v >= x);
}

// An axis from `lo` to `hi` with round ends that always shows zero.
function axisRange(lo, hi) {
  const top = hi > 0 ? niceCeil(hi) : 0;
  const bottom = lo < 0 ? -niceCeil(-lo) : 0;
  return top === bottom ? [bottom, bottom + 1] : [bottom, top];
}

const compact = new Intl.NumberFormat('en', { notation: 'compact', maximumSignificantDigits: 3 });

// An axis end as text: bytes in kB, MB, GB or TB (compact notation's "B" would read as bytes,
// not billions), anything else in compact notation, with its unit.
function axisLabel(value, unit) {
  if (unit === 'bytes') {
    const [scale, prefix] = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']].find(([s]) => Math.abs(value) >= s) || [1, ''];
    return compact.format(value / scale) + ' ' + prefix + 'B';
  }
  return compact.format(value) + (unit ? ' ' + unit : '');
}

// One small chart: the group's series on one axis labelled at both ends with the unit, and a
// legend with each series' last, min and max.
function chart(series, group) {
  const [width, height, left, top, bottom] = [320, 130, 66, 10, 10];
  const values = group.names.flatMap((name) => series[name]);
  const [lo, hi] = axisRange(Math.min(...values), Math.max(...values));
  const y = (v) => (height - bottom - ((v - lo) / (hi - lo)) * (height - top - bottom)).toFixed(1);
  const svg = h('svg', { class: 'chart', viewBox: '0 0 ' + width + ' ' + height, role: 'img',
    'data-axis-min': lo, 'data-axis-max': hi,
    'aria-label': group.names.join(', ') + ' over time, axis ' + axisLabel(lo, group.unit) + ' to ' + axisLabel(hi, group.unit) },
  h('line', { class: 'axis', x1: left, y1: top, x2: left, y2: height - bottom }),
  h('line', { class: 'axis', x1: left, y1: height - bottom, x2: width, y2: height - bottom }),
  h('text', { class: 'axis-max', x: left - 4, y: top + 8, 'text-anchor': 'end' }, axisLabel(hi, group.unit)),
  h('text', { class: 'axis-min', x: left - 4, y: height - bottom, 'text-anchor': 'end' }, axisLabel(lo, group.unit)));
  group.names.forEach((name, i) => {
    const points = series[name];
    const step = points.length > 1 ? (width - left) / (points.length - 1) : 0;
    const coords = points.map((v, j) => (left + j * step).toFixed(1) + ',' + y(v));
    svg.append(h('polyline', { class: 'series-' + (i % 4), points: coords.join(' ') }));
  });
  const legend = h('ul', { class: 'legend' }, group.names.map((name, i) => {
    const points = series[name];
    const [min, max, last] = [Math.min(...points), Math.max(...points), points[points.length - 1]];
    return h('li', { class: 'series-' + (i % 4), 'data-field': name, 'data-min': min, 'data-max': max },
      name + ': ' + last.toLocaleString('en') + ' (min ' + min.toLocaleString('en') + ', max ' + max.toLocaleString('en') + ')');
  }));
  return h('figure', { class: 'chart-box' }, h('figcaption', {}, group.title), svg, legend);
}

// A chart per axis group, or a line saying there is nothing numeric yet.
function charts(series) {
  const groups = axisGroups(series);
  if (!groups.length) return [h('p', { class: 'muted' }, 'No numeric field yet.')];
  return groups.map((group) => chart(series, group));
}

async function telemetryPage(device, module) {
  const list = h('ol', { class: 'log', id: 'telemetry-log', role: 'log', 'aria-label': 'Messages, newest first' });
  const board = h('div', { class: 'charts' });
  const waiting = h('p', { role: 'status', class: 'muted' }, 'Waiting for messages…');
  const series = {};
  let paused = false;
  let held = [];
  const pause = h('button', {
    type: 'button', 'aria-pressed': 'false',
    onclick() {
      paused = !paused;
      pause.setAttribute('aria-pressed', String(paused));
      pause.textContent = paused ? 'Resume' : 'Pause';
      if (!paused) { held.forEach(add); held = []; }
      waiting.textContent = paused ? 'Paused.' : 'Live.';
    },
  }, 'Pause');
  page('Telemetry of ' + label(device, module),
    h('p', { class: 'muted' }, 'Device-to-cloud messages and module outputs as they reach IoT Hub (the Event Hub-compatible endpoint); what routes deliver only to other modules is not shown.'),
    h('div', { class: 'actions' }, pause), waiting,
    h('h2', {}, 'Numeric fields'), board,
    h('h2', {}, 'Messages'), list);
  board.replaceChildren(...charts(series));

  function add(message) {
    const text = message.body !== undefined ? message.body : '(binary, base64) ' + message.bodyBase64;
    for (const [name, value] of Object.entries(numbers(message.body || ''))) {
      (series[name] = series[name] || []).push(value);
      if (series[name].length > 60) series[name].shift();
    }
    board.replaceChildren(...charts(series));
    const properties = Object.entries(message.properties || {}).map(([k, v]) => k + '=' + v).join(', ');
    list.prepend(h('li', {},
      h('div', {}, h('strong', {}, message.enqueuedTimeUtc), ' · ',
        (message.moduleId ? message.moduleId : message.deviceId) + (message.output ? ' → ' + message.output : '')),
      h('div', { class: 'muted' }, properties || 'no properties'),
      h('pre', {}, text)));
    while (list.children.length > 200) list.lastChild.remove();
    waiting.textContent = 'Live: ' + list.children.length + ' shown.';
  }

  const query = 'deviceId=' + enc(device) + (module ? '&moduleId=' + enc(module) : '');
  listen(query, {
    message(message) {
      if (paused) {
        held.push(message);
        waiting.textContent = 'Paused: ' + held.length + ' waiting.';
      } else {
        add(message);
      }
    },
  });
}

async function methodsPage(device, module) {
  const error = alertBox('method-error');
  const result = h('output', { id: 'method-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'stack', novalidate: true },
    h('label', { for: 'method-name' }, 'Method name'),
    h('input', { id: 'method-name', value: 'ping', required: true, autocomplete: 'off' }),
    h('label', { for: 'method-payload' }, 'Payload (JSON)'),
    h('textarea', { id: 'method-payload', rows: 4, spellcheck: 'false' }, '{}'),
    h('label', { for: 'method-timeout' }, 'Response timeout (seconds, 5–300)'),
    h('input', { id: 'method-timeout', type: 'number', min: 5, max: 300, value: 30 }),
    error,
    h('button', { type: 'submit', disabled: !can('ServiceConnect') }, 'Invoke'));
  page('Direct methods of ' + label(device, module), form, h('h2', {}, 'Result'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const payloadArea = document.getElementById('method-payload');
    let payload;
    try {
      payload = JSON.parse(payloadArea.value || 'null');
      payloadArea.setAttribute('aria-invalid', 'false');
    } catch (e) {
      payloadArea.setAttribute('aria-invalid', 'true');
      return showError(error, 'payload: ' + e.message);
    }
    showError(error, '');
    result.textContent = 'Invoking…';
    const body = {
      methodName: document.getElementById('method-name').value,
      payload,
      responseTimeoutInSeconds: Number(document.getElementById('method-timeout').value),
    };
    const reply = await api('POST', twinPath(device, module) + '/methods', body);
    if (!reply.ok) {
      result.textContent = '';
      return showError(error, errorText(reply.body, reply.status));
    }
    result.replaceChildren(h('p', {}, 'status ' + reply.body.status), h('pre', {}, json(reply.body.payload)));
  });
}

async function deploymentsPage() {
  const error = alertBox('deployments-error');
  const body = h('tbody', {});
  page('Deployments', error,
    table('Configurations: how many devices each targets and has applied.',
      ['Id', 'Priority', 'Target condition', 'Targeted', 'Applied', 'Kind'], body));
  every(5000, async () => {
    const reply = await api('GET', '/configurations');
    if (!reply.ok) return showError(error, errorText(reply.body, reply.status));
    const results = (c) => (c.systemMetrics && c.systemMetrics.results) || {};
    const shown = reply.body.map((c) => [c.id, c.priority, c.targetCondition || '', results(c).targetedCount ?? 0,
      results(c).appliedCount ?? 0, c.content && c.content.modulesContent ? 'modules' : 'other']);
    replaceIfChanged(body, shown, () => (shown.length ? shown.map(([id, priority, condition, targeted, applied, kind]) => h('tr', {},
      idCell(id, id),
      h('td', {}, priority),
      h('td', {}, h('code', {}, condition)),
      h('td', {}, targeted),
      h('td', {}, applied),
      h('td', {}, kind))) : [h('tr', {}, h('td', { colspan: 6 }, 'No deployments.'))]));
  });
}

// Rows for one table of the provisioning page: `rows` mapped by `cells`, or one row saying `none`.
function rowsOf(rows, columns, cells, none) {
  return rows.length ? rows.map((row) => {
    const [id, ...rest] = cells(row);
    return h('tr', {}, idCell(id, id), rest.map((text) => h('td', {}, text)));
  }) : [h('tr', {}, h('td', { colspan: columns }, none))];
}

async function provisioningPage() {
  const error = alertBox('provisioning-error');
  const more = h('p', { class: 'muted', hidden: true }, 'Showing the first 200 of each only.');
  const groups = h('tbody', {});
  const enrollments = h('tbody', {});
  const registrations = h('tbody', {});
  page('Provisioning', error, more,
    h('p', { class: 'muted' }, 'The Device Provisioning Service on this hub\'s ports (its service API takes the DPS connection string that edgetwin hub prints).'),
    table('Enrollment groups.', ['Group', 'Attestation', 'Allocation', 'Status'], groups),
    table('Individual enrollments.', ['Registration id', 'Attestation', 'Status'], enrollments),
    table('Registrations: where each device went.', ['Registration id', 'Status', 'Hub'], registrations));
  every(5000, async () => {
    const response = await fetch('/console/provisioning', { credentials: 'same-origin' });
    const body = await response.json().catch(() => null);
    if (!response.ok) return showError(error, errorText(body, response.status));
    showError(error, '');
    more.hidden = !body.truncated;
    const shown = [body.enrollmentGroups, body.enrollments, body.registrations];
    replaceIfChanged(groups, shown[0], () => rowsOf(shown[0], 4,
      (g) => [g.enrollmentGroupId, g.attestation, g.allocationPolicy, g.provisioningStatus], 'No enrollment groups.'));
    replaceIfChanged(enrollments, shown[1], () => rowsOf(shown[1], 3,
      (e) => [e.registrationId, e.attestation, e.provisioningStatus], 'No individual enrollments.'));
    // the device id is said only where it is not the registration id (DPS's default)
    const hubOf = (r) => (r.assignedHub || (r.errorCode ? 'error ' + r.errorCode : '—'))
      + (r.deviceId && r.deviceId !== r.registrationId ? ' as device ' + r.deviceId : '');
    replaceIfChanged(registrations, shown[2], () => rowsOf(shown[2], 3,
      (r) => [r.registrationId, r.substatus ? r.status + ' (' + r.substatus + ')' : r.status, hubOf(r)], 'No registrations yet.'));
  });
}

async function faultsPage() {
  const error = alertBox('faults-error');
  const report = h('pre', { id: 'faults-report', tabindex: 0, 'aria-label': 'Faults in force' });
  const allowed = can('RegistryWrite') && can('ServiceConnect');
  async function send(method, path, body) {
    const reply = await api(method, '/edgetwin/faults' + path, body);
    showError(error, reply.ok ? '' : errorText(reply.body, reply.status));
    refresh();
  }
  async function refresh() {
    const reply = await api('GET', '/edgetwin/faults');
    if (reply.ok) report.textContent = json(reply.body);
    else showError(error, errorText(reply.body, reply.status));
  }
  function numberForm(id, text, value, button, submit) {
    const form = h('form', { class: 'inline', novalidate: true },
      h('div', {}, h('label', { for: id }, text), h('input', { id, type: 'number', min: 0, value })),
      h('div', {}, h('button', { type: 'submit', disabled: !allowed }, button)));
    form.addEventListener('submit', (event) => { event.preventDefault(); submit(Number(document.getElementById(id).value)); });
    return form;
  }
  const throttle = h('form', { class: 'inline', novalidate: true },
    h('div', {}, h('label', { for: 'throttle-operation' }, 'Operation prefix'),
      h('input', { id: 'throttle-operation', value: 'MQTT twin/PATCH' })),
    h('div', {}, h('label', { for: 'throttle-count' }, 'Requests'), h('input', { id: 'throttle-count', type: 'number', min: 1, value: 3 })),
    h('div', {}, h('label', { for: 'throttle-retry' }, 'Retry-After (s)'), h('input', { id: 'throttle-retry', type: 'number', min: 0, value: 1 })),
    h('div', {}, h('button', { type: 'submit', disabled: !allowed }, 'Throttle')));
  throttle.addEventListener('submit', (event) => {
    event.preventDefault();
    send('POST', '/throttle', {
      operation: document.getElementById('throttle-operation').value,
      count: Number(document.getElementById('throttle-count').value),
      retryAfterSeconds: Number(document.getElementById('throttle-retry').value),
    });
  });
  page('Faults', error,
    h('p', { class: 'muted' }, 'Make the hub misbehave on purpose. Drop one connection from a device page.'),
    h('div', { class: 'actions' },
      h('button', { type: 'button', disabled: !allowed, onclick: () => send('POST', '/disconnect') }, 'Drop every connection'),
      h('button', { type: 'button', class: 'secondary', disabled: !allowed, onclick: () => send('DELETE', '') }, 'Clear all faults')),
    h('h2', {}, 'Refuse connects'),
    numberForm('refuse-seconds', 'Refuse CONNECT for (seconds)', 10, 'Refuse connects', (seconds) => send('POST', '/refuseConnects', { seconds })),
    h('h2', {}, 'Token lifetime'),
    numberForm('token-seconds', 'Cap new connections\' life at (seconds, 0 lifts)', 30, 'Set token lifetime', (seconds) => send('POST', '/tokenLifetime', { seconds })),
    h('h2', {}, 'Throttle'), throttle,
    h('h2', {}, 'In force'), report);
  refresh();
}

// ---- routing -------------------------------------------------------------------------------

const routes = [
  [/^#\/devices$/, devicesPage],
  [/^#\/device\/([^/]+)$/, devicePage],
  [/^#\/twin\/([^/]+)(?:\/([^/]+))?$/, twinPage],
  [/^#\/telemetry\/([^/]+)(?:\/([^/]+))?$/, telemetryPage],
  [/^#\/methods\/([^/]+)(?:\/([^/]+))?$/, methodsPage],
  [/^#\/deployments$/, deploymentsPage],
  [/^#\/provisioning$/, provisioningPage],
  [/^#\/faults$/, faultsPage],
];

function route() {
  cleanups.forEach((undo) => undo());
  cleanups = [];
  live = null;
  const hash = location.hash || '#/devices';
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (match) {
      render(...match.slice(1).map((part) => (part === undefined ? undefined : decodeURIComponent(part))));
      for (const link of document.querySelectorAll('nav a')) {
        link.toggleAttribute('aria-current', hash.startsWith(link.getAttribute('href')));
      }
      view.focus();
      return;
    }
  }
  page('Not found', h('p', {}, 'No console page at ' + hash + '. '), h('a', { href: '#/devices' }, 'Devices'));
}

async function start() {
  const response = await fetch('/console/session', { credentials: 'same-origin' });
  if (!response.ok) {
    location.assign('/console/');
    return;
  }
  session = await response.json();
  document.getElementById('who').textContent = session.hostName + ' · ' + session.policy
    + ' (' + session.permissions.join(', ') + ')';
  document.getElementById('sign-out').addEventListener('click', async () => {
    await fetch('/console/signout', { method: 'POST', credentials: 'same-origin', headers: { 'x-console-csrf': session.csrfToken } });
    location.assign('/console/');
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
