// Runs the official TypeScript SDK (@phala/cloud) against a Phala Cloud API: getCvmInfo for each
// id form given and getCvmList for every page, validated by the SDK's own zod schemas.
// Usage: node official_ts_sdk.mjs <sdk index.mjs> <base URL> <API key> <version|default> <ids JSON>
// Prints one JSON object: {"version", "info": [{form, ok, id, issues}], "pages": [...]}.
import { pathToFileURL } from "node:url";

const [sdkPath, baseURL, apiKey, version, idsJson] = process.argv.slice(2);
const sdk = await import(pathToFileURL(sdkPath).href);
const config = { apiKey, baseURL };
if (version !== "default") config.version = version;
const client = sdk.createClient(config);

// The paths a zod error names, for the test to judge against the allowed rejections.
function issues(error) {
  const found = error?.issues ?? error?.details ?? error?.cause?.issues ?? [];
  return Array.isArray(found)
    ? found.map((issue) => (issue.path ?? issue.loc ?? []).join(".") || String(issue.message))
    : [String(error?.message ?? error)];
}

function outcome(result) {
  if (result.success) return { ok: true, issues: [] };
  const error = result.error;
  return {
    ok: false,
    status: error?.status ?? null,
    kind: error?.constructor?.name ?? typeof error,
    message: String(error?.message ?? error).slice(0, 300),
    issues: issues(error),
  };
}

const info = [];
for (const [form, request] of JSON.parse(idsJson)) {
  const result = await sdk.safeGetCvmInfo(client, request);
  const id = result.success ? result.data.id : null;
  info.push({ form, id, ...outcome(result) });
}

const pages = [];
for (let page = 1; page <= 50; page++) {  // bounded: the test's workspace has a few pages
  const result = await sdk.safeGetCvmList(client, { page, page_size: 10 });
  const items = result.success ? result.data.items.length : null;
  pages.push({ page, items, ...outcome(result) });
  if (!result.success || page >= result.data.pages) break;
}

console.log(JSON.stringify({ version: client.config?.version ?? version, info, pages }));
