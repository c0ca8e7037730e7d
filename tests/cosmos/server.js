#!/usr/bin/env node
// Local Cosmos DB test server for medlake's tests: @zeit/cosmosdb-server (pinned in tests/run.sh),
// started in-process and adapted at runtime for the Azure Rust SDK (azure_data_cosmos
// 1.1.0-beta.1). Nothing under node_modules is edited. See tests/cosmos/README.md.
//
//   node tests/cosmos/server.js [options]
//
// Options:
//   --port N               port to listen on, on 127.0.0.1 (default 0 = pick a free one)
//   --no-ssl               plain HTTP instead of HTTPS (HTTPS uses the package's bundled
//                          self-signed certificate, CN=cosmosdb, expired in 2021)
//   --parent-pid PID       exit once process PID no longer exists (polled every second)
//   --die-after-pages N    fault injection: exit abruptly (code 1) right after the Nth query
//                          result page (200 answer to POST .../docs with x-ms-documentdb-isquery)
//                          has been served, counted across the whole process (0: on the
//                          first query, unanswered); later connections are dropped
//   --throttle-first N     fault injection: the first N document query requests answer 429
//                          TooManyRequests with x-ms-retry-after-ms: 50
//   --feed-retention N     the change feed keeps only the last N changes of each container; a
//                          continuation older than that answers 400 (as an expired all versions
//                          and deletes continuation does); default: every change is kept
//   --ignore-stdin         do not exit when stdin closes (for manual runs with stdin at /dev/null)
//   -h, --help             print this help
//
// Prints exactly one line to stdout once ready, then nothing else:
//   cosmos listening on https://127.0.0.1:PORT      (http:// with --no-ssl)
// Diagnostics go to stderr. Exits when stdin closes, when --parent-pid is gone, and on
// SIGTERM/SIGINT/SIGHUP (code 0), or on --die-after-pages (code 1).
//
// The package is resolved from $MEDLAKE_NPM/node_modules (default ~/.cache/medlake-npm), then
// from NODE_PATH / the usual Node resolution.
//
// Adaptations for the Rust SDK (why: docs/DEPENDENCIES.md, "Cosmos DB with @zeit/cosmosdb-server"):
//   a. partition key range ids are strings ("0"): the SDK's PartitionKeyRange.id is a String and
//      the package creates the range with a numeric id (lib/account/collection.js constructor
//      calls partitionKeyRanges.create({id: 0, ...})). Patched: PartitionKeyRanges.prototype.create.
//   b. the account document (GET /, lib/handler/read-meta.js) advertises writable/readable
//      locations as https://<listen address>/; the SDK routes every request to them. Patched the
//      handler to advertise <this server's scheme>://<request Host>/ when the Host is one of the
//      SDK's emulator hosts (localhost, 127.0.0.1, [::1]), else 127.0.0.1:PORT; also the
//      content-location response header (hard-coded https in lib/index.js).
//   c. the rest of the account document is kept (no thinClient*Locations, so the SDK uses the
//      plain gateway; ids and policies are plain strings/numbers the SDK parses).
//   d. document queries: the SDK never sends x-ms-documentdb-query-enablecrosspartition (it
//      targets x-ms-documentdb-partitionkeyrangeid "0" instead), and the package answers
//      400 "missing partition keys" to any query without it whose WHERE lacks the partition key
//      (lib/handler/query-documents.js). The wrapper sets that header on every document query,
//      and scopes a query that carries x-ms-documentdb-partitionkey to that partition (the
//      package ignores the header); patched Documents.prototype.query.
//   e. a point read of a missing document answers 404 NotFound instead of 500 (the package's
//      lib/handler/read-document.js dereferences the missing document); wrapped that handler.
//   f. the change feed in "all versions and deletes" mode (the package has none): every create,
//      replace (and upsert) and delete of a document is recorded per container with an LSN, and
//      GET .../docs with A-IM: Full-Fidelity Feed serves it (If-None-Match: * = now, "L" = after
//      LSN L; 304 when nothing is newer; x-ms-max-item-count pages; ETag "L" = the last LSN
//      served). See tests/cosmos/README.md, "Change feed".
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const crypto = require("crypto");
const { AsyncLocalStorage } = require("async_hooks");

const HELP = fs.readFileSync(__filename, "utf8").split("\n").slice(5, 24).map((l) => l.replace(/^\/\/ ?/, "")).join("\n");

function fail(msg) {
  process.stderr.write(`cosmos server: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { port: 0, ssl: true, parentPid: null, dieAfterPages: null, throttleFirst: 0, ignoreStdin: false, feedRetention: null };
  const int = (name, v) => {
    if (v === undefined || !/^\d+$/.test(v)) fail(`${name} needs a non-negative integer, got ${v}`);
    return parseInt(v, 10);
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    switch (a) {
      case "--port": args.port = int(a, argv[++i]); break;
      case "--no-ssl": args.ssl = false; break;
      case "--parent-pid": args.parentPid = int(a, argv[++i]); break;
      case "--die-after-pages": args.dieAfterPages = int(a, argv[++i]); break;
      case "--throttle-first": args.throttleFirst = int(a, argv[++i]); break;
      case "--feed-retention": args.feedRetention = int(a, argv[++i]); break;
      case "--ignore-stdin": args.ignoreStdin = true; break;
      case "-h": case "--help": process.stdout.write(`${HELP}\n`); process.exit(0); break;
      default: fail(`unknown option ${a} (see --help)`);
    }
  }
  return args;
}

function packageDir() {
  const prefix = process.env.MEDLAKE_NPM || path.join(os.homedir(), ".cache", "medlake-npm");
  const direct = path.join(prefix, "node_modules", "@zeit", "cosmosdb-server");
  if (fs.existsSync(path.join(direct, "package.json"))) return direct;
  try {
    return path.dirname(require.resolve("@zeit/cosmosdb-server/package.json"));
  } catch (err) {
    return fail(`@zeit/cosmosdb-server not found under ${prefix}/node_modules nor NODE_PATH (tests/run.sh installs it)`);
  }
}

const args = parseArgs(process.argv.slice(2));
const pkg = packageDir();
const lib = (p) => require(path.join(pkg, "lib", p));
const scheme = args.ssl ? "https" : "http";
const queryScope = new AsyncLocalStorage();
let listenPort = null;

// (a) partition key range ids as strings.
const Items = lib("account/items").default;
const PartitionKeyRanges = lib("account/partition-key-ranges").default;
PartitionKeyRanges.prototype.create = function create(data) {
  const fixed = data && typeof data.id === "number" ? { ...data, id: String(data.id) } : data;
  return Items.prototype.create.call(this, fixed);
};

// (d) partition-scoped queries: only the documents of the x-ms-documentdb-partitionkey partition.
const Documents = lib("account/documents").default;
Documents.prototype.query = function query(params, options) {
  const scope = queryScope.getStore();
  if (!scope || !scope.scoped) return Items.prototype.query.call(this, params, options);
  const matches = (doc) => {
    const v = this._getPartition(doc);
    return scope.none ? v === undefined : v === scope.value;
  };
  const only = new Map([...this._data].filter(([, item]) => matches(item.read())));
  return Items.prototype.query.call(Object.create(this, { _data: { value: only } }), params, options);
};

// (b)/(c) the account document: locations at this server's scheme and a loopback host:port.
const EMULATOR_HOSTS = /^(localhost|127\.0\.0\.1|\[::1\]|\[0:0:0:0:0:0:0:1\]):\d+$/i;
const readMeta = lib("handler/read-meta");
readMeta.default = (account, req) => {
  const doc = JSON.parse(JSON.stringify(account.read()));
  const host = EMULATOR_HOSTS.test(req.headers.host || "") ? req.headers.host : `127.0.0.1:${listenPort}`;
  const endpoint = `${scheme}://${host}/`;
  for (const key of ["writableLocations", "readableLocations"]) {
    doc[key] = (doc[key] || []).map((loc) => ({ ...loc, databaseAccountEndpoint: endpoint }));
  }
  delete doc.thinClientWritableLocations;
  delete doc.thinClientReadableLocations;
  return doc;
};

// (e) a point read of a missing document answers 404, not 500 (lib/handler/read-document.js
// dereferences the missing document when a partition key header is sent).
const readDocument = lib("handler/read-document");
const packageReadDocument = readDocument.default;
readDocument.default = async (account, req, res, params) => {
  try {
    return await packageReadDocument(account, req, res, params);
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
  }
};

// (f) the change feed: every change of a container's documents, with an LSN. Documents.create /
// replace / delete are wrapped; replace calls delete and _set inside, so only the outermost call
// of a change records it (upsert calls create or replace).
const feeds = new WeakMap(); // Documents -> { lsn, changes: [{ lsn, op, current, previous, crts }], dropped, lsnOf: _rid -> LSN }
const copy = (v) => (v === undefined || v === null ? null : JSON.parse(JSON.stringify(v)));
let changing = 0;
function feedOf(docs) {
  let feed = feeds.get(docs);
  if (!feed) { feed = { lsn: 0, changes: [], dropped: 0, lsnOf: new Map() }; feeds.set(docs, feed); }
  return feed;
}
function record(docs, op, current, previous) {
  const feed = feedOf(docs);
  feed.lsn += 1;
  const prev = copy(previous);
  if (prev && feed.lsnOf.has(prev._rid)) prev._lsn = feed.lsnOf.get(prev._rid);
  if (current) feed.lsnOf.set(current._rid, feed.lsn);
  if (prev && op === "delete") feed.lsnOf.delete(prev._rid);
  feed.changes.push({ lsn: feed.lsn, op, current: copy(current), previous: prev, crts: Math.floor(Date.now() / 1000) });
  while (args.feedRetention !== null && feed.changes.length > args.feedRetention) {
    feed.changes.shift();
    feed.dropped += 1;
  }
}
function recorded(name, op, before) {
  const original = Items.prototype[name];
  Documents.prototype[name] = function change(...params) {
    const outer = changing === 0;
    const previous = outer && before ? before.call(this, ...params) : null;
    changing += 1;
    let result;
    try { result = original.call(this, ...params); } finally { changing -= 1; }
    if (outer) record(this, op, op === "delete" ? null : result, previous);
    return result;
  };
}
recorded("create", "create", null);
recorded("replace", "replace", function before(data) { return this._item("/id", data.id, this._getPartition(data)).read(); });
recorded("delete", "delete", function before(idOrRid, partition) { return this._item("/id", idOrRid, partition).read(); });

// The account the package creates when the server listens (lib/index.js: new account_1.default).
const accountModule = lib("account");
const PackageAccount = accountModule.default;
let account = null;
accountModule.default = class RecordedAccount extends PackageAccount {
  constructor(...params) { super(...params); account = this; } // eslint-disable-line constructor-super
};

// Loaded after the patches above: lib/routes.js captures the handlers when it is first required.
const cosmos = lib("index");
const server = args.ssl ? cosmos.createHttpsServer() : cosmos.createHttpServer();

const DOCS_PATH = /^\/+dbs\/[^/]+\/colls\/[^/]+\/docs\/?$/;
const isTrue = (v) => String(Array.isArray(v) ? v[0] : v || "").toLowerCase() === "true";
let queriesSeen = 0;
let pagesServed = 0;
let dying = false;

function partitionScope(req) {
  const raw = req.headers["x-ms-documentdb-partitionkey"];
  if (!raw) return { scoped: false };
  let parsed;
  try { parsed = JSON.parse(Array.isArray(raw) ? raw[0] : raw); } catch (err) { return { scoped: false }; }
  if (!Array.isArray(parsed)) parsed = [parsed];
  if (parsed.length === 0) return { scoped: false };
  const v = parsed[0];
  if (v !== null && typeof v === "object") return { scoped: true, none: true };
  return { scoped: true, none: false, value: v };
}

function throttle(req, res) {
  req.resume();
  req.on("end", () => {
    const body = JSON.stringify({
      code: "TooManyRequests",
      message: "Message: {\"Errors\":[\"Request rate is large. More Request Units may be needed, so no changes were made. Please retry this request later. Learn more: http://aka.ms/cosmosdb-error-429\"]}",
    });
    res.writeHead(429, {
      "content-type": "application/json",
      "x-ms-retry-after-ms": "50",
      "x-ms-substatus": "3200",
      "x-ms-activity-id": crypto.randomUUID(),
      "x-ms-request-charge": "0",
      connection: "close",
    });
    res.end(body);
  });
}

function die(res) {
  dying = true;
  process.stderr.write(`cosmos server: --die-after-pages ${args.dieAfterPages} reached, exiting\n`);
  const exit = () => process.exit(1);
  if (res.socket && !res.socket.destroyed) res.socket.once("close", exit);
  setTimeout(exit, 200).unref();
  if (!res.socket || res.socket.destroyed) exit();
}

const FEED_PATH = /^\/+dbs\/([^/]+)\/colls\/([^/]+)\/docs\/?$/;
const header = (req, name) => { const v = req.headers[name]; return Array.isArray(v) ? v[0] : v; };

function answer(res, status, headers, body) {
  res.writeHead(status, {
    "content-type": "application/json",
    "x-ms-activity-id": crypto.randomUUID(),
    "x-ms-request-charge": "1",
    connection: "close",
    ...headers,
  });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

// One page of the full-fidelity feed (f), in the wire shape of
// x-ms-cosmos-changefeed-wire-format-version 2021-09-15: { current, previous, metadata }.
function feedItem(change, pkPath) {
  const metadata = { operationType: change.op, lsn: change.lsn, crts: change.crts };
  const item = { metadata };
  if (change.op === "delete") {
    const prev = change.previous || {};
    metadata.id = prev.id;
    metadata.previousImageLSN = prev._lsn;
    const pkKey = pkPath.length === 1 ? pkPath[0] : null;
    if (pkKey !== null) metadata.partitionKey = { [pkKey]: prev[pkKey] === undefined ? null : prev[pkKey] };
    item.current = {};
  } else {
    item.current = { ...change.current, _lsn: change.lsn };
    if (change.previous) metadata.previousImageLSN = change.previous._lsn;
  }
  if (change.previous) item.previous = change.previous;
  return item;
}

function serveFeed(req, res, dbId, collId) {
  req.resume();
  const aim = String(header(req, "a-im") || "");
  const collection = account.database(decodeURIComponent(dbId)).collection(decodeURIComponent(collId));
  if (!collection.read()) { answer(res, 404, {}, { code: "NotFound", message: "Resource Not Found" }); return; }
  if (aim.toLowerCase() !== "full-fidelity feed") {
    answer(res, 400, {}, { code: "BadRequest", message: `this test server serves only A-IM: Full-Fidelity Feed, not ${aim}` });
    return;
  }
  const feed = feedOf(collection.documents);
  const ifNoneMatch = String(header(req, "if-none-match") || "").replace(/^W\//, "").replace(/"/g, "");
  if (ifNoneMatch === "") {
    answer(res, 400, {}, { code: "BadRequest", message: "Full-Fidelity Feed must start from now (If-None-Match: *) or a continuation: reading from the beginning is not supported" });
    return;
  }
  if (ifNoneMatch === "*") { answer(res, 304, { etag: `"${feed.lsn}"` }); return; }
  if (!/^\d+$/.test(ifNoneMatch)) {
    answer(res, 400, {}, { code: "BadRequest", message: `invalid continuation ${ifNoneMatch}` });
    return;
  }
  const after = parseInt(ifNoneMatch, 10);
  const oldest = feed.changes.length ? feed.changes[0].lsn : feed.lsn + 1;
  if (feed.dropped > 0 && after < oldest - 1) {
    answer(res, 400, { "x-ms-substatus": "0" }, {
      code: "BadRequest",
      message: `Message: {"Errors":["The continuation (LSN ${after}) is outside the change feed retention window: changes up to LSN ${oldest - 1} are no longer kept"]}`,
    });
    return;
  }
  const max = parseInt(header(req, "x-ms-max-item-count") || "-1", 10);
  const newer = feed.changes.filter((c) => c.lsn > after);
  const page = max > 0 ? newer.slice(0, max) : newer;
  if (page.length === 0) { answer(res, 304, { etag: `"${after}"` }); return; }
  const pkPath = collection.documents._getPartitionKeyPath();
  const last = page[page.length - 1].lsn;
  const documents = page.map((c) => feedItem(c, pkPath));
  answer(res, 200, { etag: `"${last}"`, "x-ms-item-count": String(documents.length) },
    { _rid: collection.read()._rid, Documents: documents, _count: documents.length });
}

const [packageHandler] = server.listeners("request");
server.removeAllListeners("request");
server.on("request", (req, res) => {
  if (dying) { req.socket.destroy(); return; }
  if (!args.ssl) {
    const setHeader = res.setHeader.bind(res);
    res.setHeader = (name, value) => setHeader(name,
      String(name).toLowerCase() === "content-location" ? String(value).replace(/^https:/, "http:") : value);
  }
  const pathname = (req.url || "").split("?")[0];
  const feedPath = req.method === "GET" && header(req, "a-im") ? FEED_PATH.exec(pathname) : null;
  if (feedPath) { serveFeed(req, res, feedPath[1], feedPath[2]); return; }
  const isDocQuery = req.method === "POST" && DOCS_PATH.test(pathname)
    && (isTrue(req.headers["x-ms-documentdb-isquery"]) || req.headers["content-type"] === "application/query+json")
    && !isTrue(req.headers["x-ms-cosmos-is-query-plan-request"]);
  if (!isDocQuery) { packageHandler(req, res); return; }

  queriesSeen += 1;
  if (queriesSeen <= args.throttleFirst) { throttle(req, res); return; }
  req.headers["x-ms-documentdb-query-enablecrosspartition"] = "True";
  if (args.dieAfterPages !== null) {
    if (pagesServed >= args.dieAfterPages) { // only for 0: die on the first query, unanswered
      process.stderr.write("cosmos server: --die-after-pages 0, exiting\n");
      req.socket.destroy();
      process.exit(1);
    }
    res.on("finish", () => {
      if (res.statusCode !== 200 || dying) return;
      pagesServed += 1;
      if (pagesServed >= args.dieAfterPages) die(res);
    });
  }
  queryScope.run(partitionScope(req), () => packageHandler(req, res));
});

function shutdown(code) {
  server.close();
  process.exit(code);
}

server.on("error", (err) => fail(`cannot listen: ${err.message}`));
server.listen(args.port, "127.0.0.1", () => {
  listenPort = server.address().port;
  process.stdout.write(`cosmos listening on ${scheme}://127.0.0.1:${listenPort}\n`);
});

for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => shutdown(0));

if (!args.ignoreStdin) {
  process.stdin.on("end", () => shutdown(0));
  process.stdin.on("close", () => shutdown(0));
  process.stdin.on("error", () => shutdown(0));
  process.stdin.resume();
}

if (args.parentPid !== null) {
  const alive = (pid) => {
    try {
      process.kill(pid, 0);
    } catch (err) {
      return err.code === "EPERM";
    }
    try { // a dead but not yet reaped parent is a zombie: treat it as gone
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
    } catch (err) {
      return true;
    }
  };
  if (!alive(args.parentPid)) fail(`--parent-pid ${args.parentPid} does not exist`);
  setInterval(() => { if (!alive(args.parentPid)) shutdown(0); }, 1000);
}
