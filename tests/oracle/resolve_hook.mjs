// Module resolve hook for dump_schemas.mjs: @rocket.chat/rest-typings ships ES-module
// syntax with bundler-style imports (`./v1/chat` meaning `./v1/chat.js` or
// `./v1/chat/index.js`, `ajv/dist/2019` meaning `ajv/dist/2019.js`). Try those candidates when Node's own resolution fails, and load
// the package's files as ES modules (its package.json declares no "type").

import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = '/@rocket.chat/rest-typings/';

function isFile(url) {
	const path = fileURLToPath(url);
	return existsSync(path) && statSync(path).isFile();
}

export async function resolve(specifier, context, nextResolve) {
	const fromPackage = context.parentURL?.includes(PACKAGE_DIR);
	if (fromPackage && (specifier.startsWith('./') || specifier.startsWith('../'))) {
		for (const candidate of [specifier, `${specifier}.js`, `${specifier}/index.js`]) {
			const url = new URL(candidate, context.parentURL);
			if (isFile(url)) {
				return { url: url.href, format: 'module', shortCircuit: true };
			}
		}
	}
	let resolved;
	try {
		resolved = await nextResolve(specifier, context);
	} catch (error) {
		// A deep import into a CommonJS package, e.g. `ajv/dist/2019` for `ajv/dist/2019.js`.
		if (!fromPackage || error.code !== 'ERR_MODULE_NOT_FOUND') throw error;
		resolved = await nextResolve(`${specifier}.js`, context);
	}
	if (resolved.url.includes(PACKAGE_DIR) && resolved.url.endsWith('.js')) {
		return { ...resolved, format: 'module' };
	}
	return resolved;
}
