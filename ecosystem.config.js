// PM2 process file for splatgen: `pm2 startOrReload ecosystem.config.js --update-env`
// (scripts/start_service.sh does that, then waits for /health).
//
// Apps:
//   trellis-microservice        the worker (`splatgen worker`), one per GPU when SPLATGEN_GPUS is set
//                               (trellis-microservice-<gpu>, CUDA_VISIBLE_DEVICES=<gpu>, consecutive ports)
//   gen-worker-1                the front end the 404 miner calls (`splatgen front`), given every worker URL
//   miner-sn17-mainnet          only when SPLATGEN_MINER_CMD is set: the operator's miner neuron
//
// Environment (all optional):
//   SPLATGEN_BACKEND            procedural (CPU, default) | trellis
//   SPLATGEN_WORKER_PORT        first worker port (default 8095)
//   SPLATGEN_FRONT_PORT         front end port (default 8093)
//   SPLATGEN_WORKER_HOST        worker bind address (default 127.0.0.1)
//   SPLATGEN_FRONT_HOST         front end bind address (default SPLATGEN_HOST, else 127.0.0.1)
//   SPLATGEN_GPUS               e.g. "0,1": one worker per GPU
//   SPLATGEN_PYTHON             python of the environment splatgen is installed in (default <here>/.venv/bin/python)
//   SPLATGEN_PM2_MAX_MEMORY     PM2's RSS restart limit per process (default: the front end's refuse
//                               threshold SPLATGEN_MEMORY_REFUSE_GB plus 2G, 16G by default)
//   SPLATGEN_PM2_KILL_TIMEOUT_MS  grace period between SIGINT and SIGKILL (default 90000)
//   SPLATGEN_MINER_CMD          shell command that runs the miner neuron; SPLATGEN_MINER_CWD its folder
//   every other SPLATGEN_* variable is passed to the services (see generation/settings.py).
//
// PM2 compares the main pid's RSS with max_memory_restart only every 30 s (PM2_WORKER_INTERVAL, in the
// daemon's environment), so a fast spike can slip between two checks: the front end's check before every
// generation and the worker's /recycle are the fast path, this limit is the backstop. All three read the
// same RSS, so the order must be cleanup < refuse < PM2: a PM2 restart kills an in-flight generation,
// the graceful path lets it finish.
'use strict';

const fs = require('fs');
const path = require('path');

const ROOT = __dirname;
const env = process.env;

function fail(message) {
  throw new Error(`ecosystem.config.js: ${message}`);
}

function intFromEnv(name, fallback, min, max) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    fail(`${name}=${JSON.stringify(raw)} must be a whole number between ${min} and ${max}`);
  }
  return value;
}

function memoryFromEnv(name, fallback) {
  const raw = (env[name] || '').trim();
  if (raw === '') return fallback;
  if (!/^\d+(\.\d+)?[KMG]?$/i.test(raw)) fail(`${name}=${JSON.stringify(raw)} must look like 12G, 800M or 500K`);
  return raw.toUpperCase();
}

// The front end validates its own settings; here an unusable value only falls back to the default.
function positiveNumberFromEnv(name, fallback) {
  const value = Number((env[name] || '').trim() || NaN);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

function gigabytes(value) {
  return Number.isInteger(value) ? `${value}G` : `${Math.ceil(value * 1024)}M`;
}

function memoryBytes(text) {
  const units = { K: 1024, M: 1024 ** 2, G: 1024 ** 3 };
  const unit = text.slice(-1);
  return unit in units ? Number(text.slice(0, -1)) * units[unit] : Number(text);
}

const PYTHON = path.resolve(ROOT, env.SPLATGEN_PYTHON || path.join('.venv', 'bin', 'python'));
// The console script next to the interpreter; running it with that python makes the python the main pid,
// which is the process PM2 measures.
const SPLATGEN = path.join(path.dirname(PYTHON), 'splatgen');
if (!fs.existsSync(SPLATGEN)) {
  fail(`${SPLATGEN} is missing: set up the environment first (scripts/start_service.sh does it)`);
}

const BACKEND = env.SPLATGEN_BACKEND || 'procedural';
const WORKER_HOST = env.SPLATGEN_WORKER_HOST || '127.0.0.1';
const FRONT_HOST = env.SPLATGEN_FRONT_HOST || env.SPLATGEN_HOST || '127.0.0.1';
const WORKER_PORT = intFromEnv('SPLATGEN_WORKER_PORT', 8095, 1, 65535);
const FRONT_PORT = intFromEnv('SPLATGEN_FRONT_PORT', 8093, 1, 65535);
// Room above the refuse threshold for one generation that started just under it.
const PM2_MARGIN_GB = 2;
const REFUSE_GB = positiveNumberFromEnv('SPLATGEN_MEMORY_REFUSE_GB', 14);
const MAX_MEMORY = memoryFromEnv('SPLATGEN_PM2_MAX_MEMORY', gigabytes(REFUSE_GB + PM2_MARGIN_GB));
if (memoryBytes(MAX_MEMORY) <= REFUSE_GB * 1024 ** 3) {
  console.warn(
    `ecosystem.config.js: SPLATGEN_PM2_MAX_MEMORY=${MAX_MEMORY} is not above the front end's refuse threshold ` +
      `(${REFUSE_GB} GB): PM2 may kill a worker mid-generation before the graceful recycle can act`,
  );
}
// Long enough for an in-flight generation to finish after SIGINT (uvicorn drains open requests).
const KILL_TIMEOUT_MS = intFromEnv('SPLATGEN_PM2_KILL_TIMEOUT_MS', 90000, 100, 3600000);
const GPUS = (env.SPLATGEN_GPUS || '')
  .split(',')
  .map((gpu) => gpu.trim())
  .filter((gpu) => gpu !== '');

// Settings that belong to this file, not to the services' own settings.
const LAYOUT_KEYS = new Set([
  'SPLATGEN_PORT', 'SPLATGEN_HOST', 'SPLATGEN_WORKERS', 'SPLATGEN_GPUS', 'SPLATGEN_PYTHON',
  'SPLATGEN_MINER_CMD', 'SPLATGEN_MINER_CWD',
]);

function serviceEnv(extra) {
  const out = { PYTHONUNBUFFERED: '1' };
  for (const [key, value] of Object.entries(env)) {
    if (key.startsWith('SPLATGEN_') && !LAYOUT_KEYS.has(key)) out[key] = value;
  }
  out.SPLATGEN_BACKEND = BACKEND;
  return Object.assign(out, extra);
}

const supervision = {
  exec_mode: 'fork',
  instances: 1,
  autorestart: true,
  max_memory_restart: MAX_MEMORY,
  kill_timeout: KILL_TIMEOUT_MS,
  // 500 ms, then x1.5 per crash up to 15 s; PM2 resets it after 30 s of uptime.
  exp_backoff_restart_delay: 500,
  // Ten exits in a row, each within 10 s of starting, mark the app errored instead of looping for ever.
  max_restarts: 10,
  min_uptime: 10000,
  log_date_format: 'YYYY-MM-DD HH:mm:ss.SSS Z',
  merge_logs: true,
  watch: false,
};

// Ports, hosts and the backend travel in `env`, not `args`: `startOrReload --update-env` refreshes env.
function workerApp(name, port, extraEnv) {
  return {
    ...supervision,
    name,
    cwd: ROOT,
    interpreter: PYTHON,
    script: SPLATGEN,
    args: ['worker'],
    env: serviceEnv({ SPLATGEN_HOST: WORKER_HOST, SPLATGEN_PORT: String(port), ...extraEnv }),
  };
}

const workerHostForUrl = WORKER_HOST === '0.0.0.0' ? '127.0.0.1' : WORKER_HOST;
const workers =
  GPUS.length === 0
    ? [workerApp('trellis-microservice', WORKER_PORT, {})]
    : GPUS.map((gpu, index) =>
        workerApp(`trellis-microservice-${gpu}`, WORKER_PORT + index, { CUDA_VISIBLE_DEVICES: gpu }),
      );
const workerUrls = workers.map((app) => `http://${workerHostForUrl}:${app.env.SPLATGEN_PORT}`);

const front = {
  ...supervision,
  name: 'gen-worker-1',
  cwd: ROOT,
  interpreter: PYTHON,
  script: SPLATGEN,
  args: ['front'],
  env: serviceEnv({
    SPLATGEN_HOST: FRONT_HOST,
    SPLATGEN_PORT: String(FRONT_PORT),
    SPLATGEN_WORKERS: workerUrls.join(','),
  }),
};

const apps = [...workers, front];

if ((env.SPLATGEN_MINER_CMD || '').trim() !== '') {
  apps.push({
    exec_mode: 'fork',
    autorestart: true,
    exp_backoff_restart_delay: 1000,
    log_date_format: supervision.log_date_format,
    merge_logs: true,
    kill_timeout: 30000,
    name: 'miner-sn17-mainnet',
    cwd: env.SPLATGEN_MINER_CWD || ROOT,
    interpreter: 'none',
    script: 'bash',
    args: ['-c', env.SPLATGEN_MINER_CMD],
    env: { PYTHONUNBUFFERED: '1' },
  });
}

module.exports = { apps };
