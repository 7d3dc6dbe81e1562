// Dump the request validators of @rocket.chat/rest-typings as JSON Schema.
//
// Usage: node dump_schemas.mjs OUT.json   (after `npm ci` in this directory; `make oracle`)
//
// Rocket.Chat's server validates REST input with the ajv validators this package exports
// (`API.v1.addRoute('chat.sendMessage', { validateParams: isChatSendMessageProps }, ...)`).
// Every compiled ajv validator carries the schema it was compiled from as `.schema`; this
// script writes each exported validator's schema, with the ajv options that change what
// the schema accepts (`coerceTypes`), so tests/oracle/oracle.py can check our requests in
// Python with `jsonschema`. The output is sorted and stable: re-running it on the same
// package version gives the same bytes.

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';

const require = createRequire(import.meta.url);

// The package's dist is ES-module syntax with extensionless relative imports
// (`export * from './v1/chat'`), which Node's ESM resolver refuses; Rocket.Chat loads it
// through a bundler. The hook below resolves them the way a bundler does.
register('./resolve_hook.mjs', import.meta.url);

// Record, for every compiled validator, the options of the ajv instance that compiled it.
// Both `ajv` and `ajv/dist/2019` extend the core class, so one patch sees every compile.
const AjvCore = require('ajv/dist/core').default;
const compiledBy = new WeakMap();
const originalCompile = AjvCore.prototype.compile;
AjvCore.prototype.compile = function compile(schema, meta) {
	const validate = originalCompile.call(this, schema, meta);
	compiledBy.set(validate, {
		coerceTypes: this.opts.coerceTypes ?? false,
		draft: this.constructor.name,
	});
	return validate;
};

const out = process.argv[2];
if (!out) {
	console.error('usage: node dump_schemas.mjs OUT.json');
	process.exit(2);
}

const pkgJson = JSON.parse(
	readFileSync(require.resolve('@rocket.chat/rest-typings/package.json'), 'utf8'),
);
const typings = await import('@rocket.chat/rest-typings');

const validators = {};
for (const name of Object.keys(typings).sort()) {
	const value = typings[name];
	if (typeof value !== 'function' || typeof value.schema !== 'object' || value.schema === null) {
		continue;
	}
	const options = compiledBy.get(value) ?? {};
	validators[name] = {
		coerceTypes: options.coerceTypes ?? false,
		draft: options.draft ?? 'unknown',
		schema: value.schema,
	};
}

const document = {
	source: {
		package: pkgJson.name,
		version: pkgJson.version,
		ajv: JSON.parse(readFileSync(require.resolve('ajv/package.json'), 'utf8')).version,
		// package.json overrides it (the npm registry this was built from has no 7.x build); the validators use
		// it only for three enums (teams, voip, agent status), none on a route the bridge calls.
		coreTypings: JSON.parse(
			readFileSync(require.resolve('@rocket.chat/core-typings/package.json'), 'utf8'),
		).version,
		generator: 'tests/oracle/dump_schemas.mjs (make oracle)',
	},
	validators,
};
writeFileSync(out, `${JSON.stringify(document, null, 1)}\n`);
console.log(`${Object.keys(validators).length} validators from ${pkgJson.name}@${pkgJson.version} -> ${out}`);
