// A prepared-statement workload for one Node.js client library, run by
// tests/integration/test_client_matrix.py through the pooler in transaction mode.
//
//   node workload.js pg|postgres
//
// Connection and sizes come from the environment: PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE, MX_TABLE (created by the test: worker int, seq int, val text, PK (worker, seq)),
// MX_ACCT (worker int PK, balance bigint, one row per worker), MX_WORKERS, MX_ITERATIONS.
//
// Every worker has its own connection and, each iteration: inserts a row tagged with its id, adds
// to its balance in an explicit transaction and reads it back, and reads back its own rows (count,
// sum, the value just written), all as named prepared statements. Each sends DEALLOCATE ALL once
// (node-postgres at a third of the run, postgres.js after its transactions, see there) and checks
// what a direct connection would do next; worker 0 adds a column to MX_TABLE halfway, after which every worker also reads
// the new column through a statement prepared after the change. Any wrong value is an error.
// Prints one JSON line: {"ok": bool, "errors": [...], "stats": {...}}.
'use strict';

const driver = process.argv[2];
const env = process.env;
const table = env.MX_TABLE;
const acct = env.MX_ACCT;
const workers = Number(env.MX_WORKERS || 12);
const iterations = Number(env.MX_ITERATIONS || 40);
const conn = {
  host: env.PGHOST, port: Number(env.PGPORT), user: env.PGUSER, password: env.PGPASSWORD,
  database: env.PGDATABASE,
};

const errors = [];
const stats = { deallocate_26000: 0, after_ddl_reads: 0, queries: 0 };
let ddlDone = false;

function check(cond, what) {
  if (!cond) throw new Error(`wrong result: ${what}`);
}

function sqls() {
  return {
    ins: `INSERT INTO ${table} (worker, seq, val) VALUES ($1, $2, $3)`,
    agg: `SELECT count(*)::int AS n, coalesce(sum(seq), 0)::int AS s FROM ${table} WHERE worker = $1`,
    one: `SELECT val FROM ${table} WHERE worker = $1 AND seq = $2`,
    upd: `UPDATE ${acct} SET balance = balance + $2 WHERE worker = $1`,
    bal: `SELECT balance::int AS b FROM ${acct} WHERE worker = $1`,
    note: `SELECT note, val FROM ${table} WHERE worker = $1 AND seq = $2`,
    all: `SELECT seq, val FROM ${table} WHERE worker = $1 ORDER BY seq`,
    ddl: `ALTER TABLE ${table} ADD COLUMN note text NOT NULL DEFAULT 'noted'`,
  };
}

// node-postgres: named queries ({name, text, values}); one Client per worker.
async function runPg(w) {
  const { Client } = require('pg');
  const q = sqls();
  const c = new Client(conn);
  await c.connect();
  const named = (name, values) => c.query({ name, text: q[name], values });
  try {
    let balance = 0;
    for (let j = 0; j < iterations; j++) {
      await named('ins', [w, j, `w${w}-${j}`]);
      await c.query('BEGIN');
      await named('upd', [w, j]);
      const b = (await named('bal', [w])).rows[0].b;
      await c.query('COMMIT');
      balance += j;
      check(b === balance, `worker ${w} balance ${b} != ${balance}`);
      const agg = (await named('agg', [w])).rows[0];
      check(agg.n === j + 1 && agg.s === (j * (j + 1)) / 2, `worker ${w} agg ${JSON.stringify(agg)}`);
      const one = (await named('one', [w, j])).rows;
      check(one.length === 1 && one[0].val === `w${w}-${j}`, `worker ${w} one ${JSON.stringify(one)}`);
      stats.queries += 6;
      if (j === Math.floor(iterations / 3)) {
        await c.query('DEALLOCATE ALL');
        // node-postgres does not notice DEALLOCATE ALL: it Binds its name without a Parse, and
        // PostgreSQL (so the pooler too) must answer that it does not exist, in the client's words.
        try {
          await named('agg', [w]);
          throw new Error(`worker ${w}: statement "agg" still usable after DEALLOCATE ALL`);
        } catch (e) {
          check(e.code === '26000' && /"agg"/.test(e.message), `after DEALLOCATE ALL: ${e.code} ${e.message}`);
          stats.deallocate_26000++;
        }
        c.connection.parsedStatements = {};  // what the application would do: prepare again
      }
      if (w === 0 && j === Math.floor(iterations / 2)) {
        await c.query(q.ddl);
        ddlDone = true;
      }
      if (ddlDone) {
        const r = (await named('note', [w, j])).rows;
        check(r.length === 1 && r[0].note === 'noted' && r[0].val === `w${w}-${j}`, `note ${JSON.stringify(r)}`);
        stats.after_ddl_reads++;
      }
    }
    const rows = (await named('all', [w])).rows;
    check(rows.length === iterations, `worker ${w} has ${rows.length} rows`);
    rows.forEach((r, j) => check(r.seq === j && r.val === `w${w}-${j}`, `row ${JSON.stringify(r)}`));
  } finally {
    await c.end();
  }
}

// postgres.js: tagged templates, prepared by default (prepare: true); one connection per worker.
async function runPostgres(w) {
  const postgres = require('postgres');
  const sql = postgres({ ...conn, username: conn.user, max: 1, onnotice: () => {} });
  const t = sql(table);
  const a = sql(acct);
  try {
    let balance = 0;
    for (let j = 0; j < iterations; j++) {
      await sql`INSERT INTO ${t} (worker, seq, val) VALUES (${w}, ${j}, ${`w${w}-${j}`})`;
      const b = await sql.begin(async (tx) => {
        await tx`UPDATE ${a} SET balance = balance + ${j} WHERE worker = ${w}`;
        return (await tx`SELECT balance::int AS b FROM ${a} WHERE worker = ${w}`)[0].b;
      });
      balance += j;
      check(b === balance, `worker ${w} balance ${b} != ${balance}`);
      const [agg] = await sql`SELECT count(*)::int AS n, coalesce(sum(seq), 0)::int AS s FROM ${t} WHERE worker = ${w}`;
      check(agg.n === j + 1 && agg.s === (j * (j + 1)) / 2, `worker ${w} agg ${JSON.stringify(agg)}`);
      const one = await sql`SELECT val FROM ${t} WHERE worker = ${w} AND seq = ${j}`;
      check(one.length === 1 && one[0].val === `w${w}-${j}`, `worker ${w} one ${JSON.stringify(one)}`);
      stats.queries += 6;
      if (w === 0 && j === Math.floor(iterations / 2)) {
        await sql.unsafe(`ALTER TABLE ${table} ADD COLUMN note text NOT NULL DEFAULT 'noted'`);
        ddlDone = true;
      }
      if (ddlDone) {
        const r = await sql`SELECT note, val FROM ${t} WHERE worker = ${w} AND seq = ${j}`;
        check(r.length === 1 && r[0].note === 'noted' && r[0].val === `w${w}-${j}`, `note ${JSON.stringify(r)}`);
        stats.after_ddl_reads++;
      }
    }
    // postgres.js keeps its statements after DEALLOCATE ALL; the next use gets 26000 (routine
    // FetchPreparedStatement), on which it prepares again and retries by itself. It cannot retry
    // inside a transaction (nor on a direct connection), so this comes after the transactions.
    await sql.unsafe('DEALLOCATE ALL');
    const [agg] = await sql`SELECT count(*)::int AS n, coalesce(sum(seq), 0)::int AS s FROM ${t} WHERE worker = ${w}`;
    check(agg.n === iterations, `worker ${w} agg after DEALLOCATE ALL ${JSON.stringify(agg)}`);
    stats.deallocate_26000++;
    const rows = await sql`SELECT seq, val FROM ${t} WHERE worker = ${w} ORDER BY seq`;
    check(rows.length === iterations, `worker ${w} has ${rows.length} rows`);
    rows.forEach((r, j) => check(r.seq === j && r.val === `w${w}-${j}`, `row ${JSON.stringify(r)}`));
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function main() {
  const run = { pg: runPg, postgres: runPostgres }[driver];
  if (!run) throw new Error(`unknown driver ${driver}`);
  await Promise.all(Array.from({ length: workers }, (_, w) => run(w).catch((e) => {
    errors.push(`worker ${w}: ${e.code || ''} ${e.message}${e.query ? ` in: ${e.query}` : ''}`);
  })));
  console.log(JSON.stringify({ ok: errors.length === 0, errors, stats }));
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, errors: [`main: ${e.stack}`], stats }));
  process.exitCode = 1;
});
