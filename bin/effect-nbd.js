#!/usr/bin/env node
// The effect-nbd command: the compiled entry point in dist/ (built by `npm run build`,
// which `npm install` runs in a clone; a packed or installed package ships dist/ built).
import "../dist/cli/main.js"
