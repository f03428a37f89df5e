// Run the BSI csaf-validator-lib schema and mandatory tests (CSAF 2.0 section 6.1) on CSAF files.
// Usage: node csaf_validator.mjs FILE...   Prints one JSON line per file; exit 1 if any file is invalid.
// The library is installed with: npm install --prefix tests/advisories/node @secvisogram/csaf-validator-lib
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const lib = join(here, 'node', 'node_modules', '@secvisogram', 'csaf-validator-lib')
const load = (name) => import(pathToFileURL(join(lib, name)).href)

const { default: validateStrict } = await load('validateStrict.js')
const mandatory = await load('mandatoryTests.js')
const { csaf_2_0_strict } = await load('schemaTests.js')
const tests = [csaf_2_0_strict, ...Object.values(mandatory)]

let failed = false
for (const file of process.argv.slice(2)) {
  const doc = JSON.parse(await readFile(file, 'utf8'))
  const result = await validateStrict(tests, doc)
  const failures = result.tests
    .filter((t) => !t.isValid)
    .map((t) => ({ name: t.name, errors: t.errors }))
  if (!result.isValid) failed = true
  console.log(JSON.stringify({ file, isValid: result.isValid, failures }))
}
process.exit(failed ? 1 : 0)
