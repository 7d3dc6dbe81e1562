// Run the real ajv validators of @rocket.chat/rest-typings on a corpus, for the differential
// test in test_rest_schemas.py. stdin: [[validatorName, params], ...]; stdout: [true|false, ...].

import { readFileSync } from 'node:fs';
import { register } from 'node:module';

register('./resolve_hook.mjs', import.meta.url);
const typings = await import('@rocket.chat/rest-typings');
const corpus = JSON.parse(readFileSync(0, 'utf8'));
// Each call gets its own copy: with coerceTypes ajv rewrites the data it validates.
console.log(JSON.stringify(corpus.map(([name, params]) => typings[name](structuredClone(params)))));
